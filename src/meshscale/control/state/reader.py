"""StateReader: the read side of State, for components that only look.

Map building (the batcher's snapshot source), the DERP admission check, the registration
page and metrics take a StateReader, so a reader of their code (and the type checker)
sees that they never write. :class:`~meshscale.control.state.state.State` satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from meshscale.control.models import Node, NodeID, PendingRegistration, User, UserID
from meshscale.key import NodePublic
from meshscale.tailcfg import FilterRule


class StateReader(Protocol):
    @property
    def clock(self) -> Callable[[], datetime]: ...
    def list_users(self) -> list[User]: ...
    def get_node(self, node_id: NodeID) -> Node: ...
    def get_node_by_node_key(self, node_key: NodePublic) -> Node | None: ...
    def list_nodes(self, user_id: UserID | None = None) -> list[Node]: ...
    def peers_of(self, node_id: NodeID) -> list[Node]: ...
    def packet_filter(self, node_id: NodeID) -> Sequence[FilterRule]: ...
    def get_registration(self, reg_id: str) -> PendingRegistration | None: ...
