"""The control server's entities and the change events State publishes.

Every entity is a frozen dataclass: :class:`~meshscale.control.state.State` hands out
snapshots, and a holder can keep one across awaits without it changing underneath. A
write goes through State, which stores a *new* object (``dataclasses.replace``) and
publishes a change event.

Entities (persisted unless noted)::

    User            id, name (unique among local users), display_name, email, provider_id
    Node            machine_key (unique), node_key (unique), disco_key, ipv4/ipv6 (unique,
                    kept for life), hostname, given_name (MagicDNS label, unique), user_id,
                    hostinfo (JSON), endpoints, last_seen, expiry, tags, approved_routes, ...
                    online (in memory only: a property of live map sessions)
    PreAuthKey      prefix + sha256(secret); full key "hskey-auth-<prefix>-<secret>" shown once
    APIKey          prefix + sha256(secret); full key "hskey-api-<prefix>-<secret>" shown once
    PendingRegistration   in memory: registration id -> machine key, node key, hostinfo,
                    and a completion the protocol layer awaits (interactive login,
                    docs/protocol/control.md §3.4)

Change events (a closed union, match on it and finish with ``assert_never``)::

    NodeAdded(node_id)  NodeChanged(node_id, fields)  NodeRemoved(node_id)
    UserChanged(user_id)  PolicyChanged(nodes)  DNSChanged()
    ResyncRequired()    a subscriber fell behind and lost events: rebuild from the snapshot
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NewType

from meshscale.key import DiscoPublic, MachinePublic, NodePublic

UserID = NewType("UserID", int)
NodeID = NewType("NodeID", int)
PreAuthKeyID = NewType("PreAuthKeyID", int)
APIKeyID = NewType("APIKeyID", int)
TailnetID = NewType("TailnetID", int)
RegistrationID = NewType("RegistrationID", str)

IPPrefix = ipaddress.IPv4Network | ipaddress.IPv6Network

# The tailnet every server has (migration 0006): the single tailnet of a server that never
# created another, and where users from an identity provider sign in.
DEFAULT_TAILNET: Final = TailnetID(1)
DEFAULT_TAILNET_NAME: Final = "default"

# Key text formats (Headscale >= 0.27 shape: a public lookup prefix, then the secret).
PREAUTH_KEY_PREFIX: Final = "hskey-auth-"
API_KEY_PREFIX: Final = "hskey-api-"
KEY_PREFIX_LENGTH: Final = 12  # hex characters of the public lookup prefix
KEY_SECRET_LENGTH: Final = 64  # hex characters of the secret (256 bits)


class RegisterMethod(StrEnum):
    """How a node was admitted (Headscale's register_method column values)."""

    AUTH_KEY = "authkey"
    CLI = "cli"
    OIDC = "oidc"


@dataclass(frozen=True, slots=True)
class Tailnet:
    """One tailnet of the server (issue #16): it owns users (and so nodes and pre-auth
    keys), a policy and a MagicDNS base domain (None: the server's)."""

    id: TailnetID
    name: str
    base_domain: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class User:
    id: UserID
    name: str
    display_name: str = ""
    email: str = ""
    provider_id: str | None = None  # None for local users; set for OIDC users
    created_at: datetime | None = None
    oidc_issuer: str | None = None  # with oidc_subject: the identity of an OIDC user
    oidc_subject: str | None = None
    groups: tuple[str, ...] = ()  # the IdP's groups at the last sign-in
    tailnet_id: TailnetID = DEFAULT_TAILNET

    @property
    def login_name(self) -> str:
        """The name shown as the login (tailcfg.Login.LoginName)."""
        return self.email or self.name


@dataclass(frozen=True, slots=True, eq=True)
class Node:
    id: NodeID
    machine_key: MachinePublic
    node_key: NodePublic
    user_id: UserID
    hostname: str
    given_name: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    disco_key: DiscoPublic | None = None
    hostinfo: dict[str, Any] = field(default_factory=dict, hash=False)
    endpoints: tuple[str, ...] = ()
    last_seen: datetime | None = None
    expiry: datetime | None = None  # None: never expires
    tags: tuple[str, ...] = ()
    approved_routes: tuple[IPPrefix, ...] = ()
    register_method: RegisterMethod = RegisterMethod.AUTH_KEY
    auth_key_id: PreAuthKeyID | None = None
    ephemeral: bool = False
    created_at: datetime | None = None
    tailnet_id: TailnetID = DEFAULT_TAILNET  # always its user's (State keeps them equal)
    online: bool = False  # not persisted
    # Memory only, kept by State: the non-exit prefixes this node is the HA primary for
    # (state/primary.py), and whether its map stream has been gone past the route grace.
    primary: tuple[IPPrefix, ...] = ()
    route_standby: bool = False

    __hash__ = None  # type: ignore[assignment]  # hostinfo is a dict; nodes are not keys

    def addresses(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        """The node's tailnet addresses, IPv4 first."""
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        if self.ipv4 is not None:
            out.append(self.ipv4)
        if self.ipv6 is not None:
            out.append(self.ipv6)
        return tuple(out)

    def is_expired(self, now: datetime) -> bool:
        return self.expiry is not None and self.expiry <= now

    def announced_routes(self) -> tuple[IPPrefix, ...]:
        """Routes the client announces in Hostinfo.RoutableIPs (invalid entries skipped)."""
        raw = self.hostinfo.get("RoutableIPs") or []
        out: list[IPPrefix] = []
        if isinstance(raw, list):
            for item in raw:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError:
                    continue
        return tuple(out)

    def served_routes(self) -> tuple[IPPrefix, ...]:
        """Announced routes that are approved (approving one exit route approves both)."""
        if not self.approved_routes:
            return ()
        approved = set(self.approved_routes)
        announced = self.announced_routes()
        if any(r.prefixlen == 0 for r in approved):
            approved.update(r for r in announced if r.prefixlen == 0)
        return tuple(r for r in announced if r in approved)

    def primary_routes(self) -> tuple[IPPrefix, ...]:
        """The non-exit prefixes this node is elected primary for and still serves."""
        served = set(self.served_routes())
        return tuple(r for r in self.primary if r in served)

    def exit_routes(self) -> tuple[IPPrefix, ...]:
        """Both /0s when this node is an approved exit node, else ()."""
        exits = tuple(r for r in self.served_routes() if r.prefixlen == 0)
        return exits if len(exits) == 2 else ()


@dataclass(frozen=True, slots=True)
class Share:
    """Node ``node_id`` is shared with user ``user_id`` of another tailnet (node sharing,
    docs/protocol/policy.md §6)."""

    node_id: NodeID
    user_id: UserID
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PreAuthKey:
    id: PreAuthKeyID
    user_id: UserID
    prefix: str
    hash: bytes  # sha256 of the secret part; the secret itself is never stored
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    expiration: datetime | None = None
    tags: tuple[str, ...] = ()
    created_at: datetime | None = None
    tailnet_id: TailnetID = DEFAULT_TAILNET  # its user's

    def display(self) -> str:
        """The redacted form shown in listings."""
        return f"{PREAUTH_KEY_PREFIX}{self.prefix}-***"

    def is_expired(self, now: datetime) -> bool:
        return self.expiration is not None and self.expiration <= now


@dataclass(frozen=True, slots=True)
class NewPreAuthKey:
    """Returned once by ``State.create_preauth_key``: the only time the full key exists."""

    key: PreAuthKey
    secret: str  # the full "hskey-auth-<prefix>-<secret>" text


@dataclass(frozen=True, slots=True)
class APIKey:
    id: APIKeyID
    prefix: str
    hash: bytes
    expiration: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime | None = None
    tailnet_id: TailnetID | None = None  # None: a server admin key; else scoped to one

    def display(self) -> str:
        return f"{API_KEY_PREFIX}{self.prefix}-***"

    def is_expired(self, now: datetime) -> bool:
        return self.expiration is not None and self.expiration <= now


@dataclass(frozen=True, slots=True)
class NewAPIKey:
    key: APIKey
    secret: str  # the full "hskey-api-<prefix>-<secret>" text


class PendingRegistration:
    """An interactive registration waiting for an admin (docs/protocol/control.md §3.4). In memory
    only.

    The protocol layer returns ``AuthURL = <server_url>/register/<id>`` and then awaits
    :meth:`wait` on the followup request. ``State.complete_registration`` (the CLI's
    ``nodes register --key <id>``) resolves it with the new Node; expiry or
    ``State.cancel_registration`` resolve it with an error.
    """

    __slots__ = (
        "_done",
        "_error",
        "_node",
        "ephemeral",
        "expires_at",
        "hostinfo",
        "id",
        "machine_key",
        "node_key",
    )

    def __init__(
        self,
        id: RegistrationID,
        machine_key: MachinePublic,
        node_key: NodePublic,
        hostinfo: dict[str, Any],
        expires_at: datetime,
        ephemeral: bool = False,
    ) -> None:
        self.id = id
        self.machine_key = machine_key
        self.node_key = node_key
        self.hostinfo = hostinfo
        self.expires_at = expires_at
        self.ephemeral = ephemeral
        # asyncio.Event binds to a loop on first wait, so State can create this from
        # synchronous code; it must be resolved from the loop thread.
        self._done = asyncio.Event()
        self._node: Node | None = None
        self._error: str | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def node(self) -> Node | None:
        return self._node

    @property
    def error(self) -> str | None:
        return self._error

    def resolve(self, node: Node) -> None:
        if not self._done.is_set():
            self._node = node
            self._done.set()

    def fail(self, message: str) -> None:
        if not self._done.is_set():
            self._error = message
            self._done.set()

    async def wait(self) -> Node:
        """Wait until an admin completes the registration.

        Raises :class:`RegistrationFailed` if it expired or was cancelled.
        """
        await self._done.wait()
        if self._node is None:
            raise RegistrationFailed(self._error or "registration failed")
        return self._node


# ---- errors ---------------------------------------------------------------------------
#
#   StateError (ValueError)
#    +-- NotFound              no such user/node/key/registration
#    +-- Conflict              a uniqueness rule would break (name taken, user has nodes)
#    +-- InvalidArgument       a malformed name, tag, route or expiry
#    +-- PreAuthKeyError       a pre-auth key is unknown, expired or already used
#    +-- APIKeyError           an API key is unknown or expired
#    +-- RegistrationFailed    a pending registration expired or was cancelled
#    +-- AddressExhausted      no free address left in a prefix
#    +-- LimitExceeded         a bounded table (pending registrations) is full


class StateError(ValueError):
    """Base error of the control state. The message is safe to show to an operator."""


class NotFound(StateError):
    pass


class Conflict(StateError):
    pass


class InvalidArgument(StateError):
    pass


class Forbidden(StateError):
    """The caller may not do this at all (a tailnet-scoped API key asking for a
    server-level operation); another tailnet's objects are NotFound instead."""


class PreAuthKeyError(StateError):
    """The text mirrors Headscale's (``invalid authkey``, ``authkey expired``, ...),
    and is what RegisterResponse.Error carries."""


class APIKeyError(StateError):
    pass


class RegistrationFailed(StateError):
    pass


class AddressExhausted(StateError):
    pass


class LimitExceeded(StateError):
    pass


# ---- change events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeAdded:
    node_id: NodeID


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """``fields`` names the Node attributes that changed (``"endpoints"``, ``"online"``,
    ``"hostinfo"``, ``"disco_key"``, ``"node_key"``, ``"expiry"``, ``"given_name"``,
    ``"tags"``, ``"user_id"``, ``"approved_routes"``, ``"last_seen"``, ...)."""

    node_id: NodeID
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    """``tailnet_id``: the removed node's tailnet (the batcher sends the removal only to
    sessions that could see it; None from sources without tailnets: any session)."""

    node_id: NodeID
    tailnet_id: TailnetID | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UserChanged:
    user_id: UserID


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """The policy's answers changed: for every node (``nodes`` None: a new policy text), or
    for the nodes listed (what a node or user write altered for others)."""

    nodes: frozenset[NodeID] | None = None


@dataclass(frozen=True, slots=True)
class DNSChanged:
    pass


@dataclass(frozen=True, slots=True)
class ResyncRequired:
    """The subscriber's queue overflowed and events were dropped: send full maps."""


Change = (
    NodeAdded
    | NodeChanged
    | NodeRemoved
    | UserChanged
    | PolicyChanged
    | DNSChanged
    | (ResyncRequired)
)


class ChangeSubscription:
    """One subscriber's queue of change events (``State.subscribe()``).

    Use ``async for change in sub`` or ``await sub.get()``; ``drain()`` takes everything
    queued without waiting (what a batcher does after its first wake-up). The queue is
    bounded: on overflow it is replaced by a single :class:`ResyncRequired`.

    Writes may come from any thread; the waiting side must run in one event loop.
    """

    def __init__(
        self, max_queue: int, on_close: Callable[[ChangeSubscription], None] | None = None
    ) -> None:
        self.max_queue = max_queue
        self._queue: deque[Change] = deque()
        self._lock = threading.Lock()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._on_close = on_close
        self.dropped = 0  # events lost to overflow (statistics)
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @property
    def closed(self) -> bool:
        return self._closed

    def put_many(self, events: list[Change]) -> None:
        with self._lock:
            if self._closed:
                return
            if self._queue and isinstance(self._queue[0], ResyncRequired):
                # A pending resync rebuilds from the snapshot, which already holds these.
                self.dropped += len(events)
            elif len(self._queue) + len(events) > self.max_queue:
                self.dropped += len(self._queue) + len(events)
                self._queue.clear()
                self._queue.append(ResyncRequired())
            else:
                self._queue.extend(events)
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wakeup.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    def get_nowait(self) -> Change | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def drain(self) -> list[Change]:
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
            return out

    def __len__(self) -> int:
        return len(self._queue)

    async def get(self) -> Change:
        """Wait for the next event. Raises StopAsyncIteration once closed and empty."""
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    raise StopAsyncIteration
                self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> ChangeSubscription:
        return self

    async def __anext__(self) -> Change:
        return await self.get()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        self._wake()


@dataclass(frozen=True, slots=True)
class ShareView:
    """How one viewer sees a peer of another tailnet (node sharing, docs/protocol/policy.md
    §6). ``sharer`` > 0: the peer is shared *in* (tailcfg ``Sharer``, ``IsJailed``: the
    viewer's client drops flows it opens, TS-2024-005). ``sharee``: the peer is a
    recipient's device on the shared node's side (``Hostinfo.ShareeNode``). Either way only
    the peer's own addresses travel (no subnet routes, no exit role, ts#10642), under
    ``name``, the FQDN in the peer's own tailnet; when that tailnet has no base domain of
    its own, under ``zone`` (its name) below the server's: ``host.zone.base.``, as Tailscale
    names a shared-in node under its own tailnet's domain. So a peer of another tailnet
    never takes the name of one of the viewer's own devices."""

    name: str
    sharer: int = 0
    sharee: bool = False
    zone: str = ""
