"""Tailnets: State's part for them (issue #16 part 1).

A tailnet owns users (and through them nodes and pre-auth keys), a policy and a MagicDNS
base domain; addresses are one space per server, so nodes shared across tailnets never
clash. Tailnet 1, ``default``, always exists: the single tailnet of a server that never
created another (migration 0006), where users of an identity provider sign in. A tailnet
is deleted only when it has no user left (its scoped API keys and policy go with it).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from meshscale.control.db.repository import IntegrityError
from meshscale.control.models import (
    DEFAULT_TAILNET,
    Conflict,
    DNSChanged,
    InvalidArgument,
    NotFound,
    Tailnet,
    TailnetID,
)
from meshscale.control.state.core import StateCore

TAILNET_NAME_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_DOMAIN: Final = 200  # characters of a base domain (names under it need room too)


def validate_base_domain(domain: str) -> str:
    """A MagicDNS base domain: dot-separated DNS labels, lowercase, no trailing dot."""
    d = domain.strip().rstrip(".").lower() if isinstance(domain, str) else ""
    if not d or len(d) > MAX_DOMAIN or not all(TAILNET_NAME_RE.match(x) for x in d.split(".")):
        raise InvalidArgument(
            f"invalid base domain {str(domain)[:70]!r}: dot-separated labels of a-z, 0-9 "
            f"and '-', at most {MAX_DOMAIN} characters"
        )
    return d


def validate_tailnet_name(name: str) -> str:
    if not isinstance(name, str) or not TAILNET_NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid tailnet name {str(name)[:70]!r}: 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


class Tailnets:
    """State's tailnet methods, over the shared core."""

    def __init__(self, core: StateCore) -> None:
        self.core = core

    def create_tailnet(self, name: str) -> Tailnet:
        validate_tailnet_name(name)
        core = self.core
        with core.write():
            if any(t.name == name for t in core.tailnets.values()):
                raise Conflict(f"tailnet {name!r} already exists")
            tailnet = Tailnet(TailnetID(0), name, None, core.clock())
            try:
                tailnet = replace(tailnet, id=core.store.insert_tailnet(tailnet))
            except IntegrityError as exc:
                raise Conflict(f"tailnet {name!r} already exists") from exc
            core.add_tailnet(tailnet)
            return tailnet

    def list_tailnets(self) -> list[Tailnet]:
        with self.core.lock:
            return sorted(self.core.tailnets.values(), key=lambda t: t.id)

    def get_tailnet_by_name(self, name: str) -> Tailnet:
        with self.core.lock:
            for t in self.core.tailnets.values():
                if t.name == name:
                    return t
        raise NotFound(f"tailnet {str(name)[:70]!r} not found")

    def rename_tailnet(self, tailnet_id: TailnetID, new_name: str) -> Tailnet:
        validate_tailnet_name(new_name)
        core = self.core
        with core.write():
            tailnet = core.get_tailnet(tailnet_id)
            if any(t.name == new_name and t.id != tailnet_id for t in core.tailnets.values()):
                raise Conflict(f"tailnet {new_name!r} already exists")
            tailnet = replace(tailnet, name=new_name)
            core.store.update_tailnet(tailnet)
            core.tailnets[tailnet.id] = tailnet
            if core.shares:  # other tailnets' maps may name its nodes host.NAME.<base>
                users = {u for by_user in core.shares.values() for u in by_user}
                core.shares_changed({*core.shares, *(n.id for n in core.nodes.values()
                                                     if n.user_id in users)})  # fmt: skip
            return tailnet

    def set_base_domain(self, tailnet_id: TailnetID, domain: str | None) -> Tailnet:
        """Give the tailnet its own MagicDNS base domain (None or "": the server's). Its
        nodes get new maps naming them under it (a DNSChanged: every map is rebuilt)."""
        value = validate_base_domain(domain) if domain else None
        core = self.core
        host = core.options.server_host
        if value and host and (host == value or host.endswith("." + value)):
            raise InvalidArgument(
                f"base domain {value!r} contains the server's host {host!r}: clients would "
                "answer it themselves and lose the control server"
            )
        with core.write():
            tailnet = replace(core.get_tailnet(tailnet_id), base_domain=value)
            core.store.update_tailnet(tailnet)
            core.tailnets[tailnet.id] = tailnet
            core.tailnets_changed()
            core.emit(DNSChanged())
            return tailnet

    def delete_tailnet(self, tailnet_id: TailnetID) -> None:
        """Delete an empty tailnet (no user; so no node or pre-auth key either). Its
        policy and its scoped API keys go with it. The default tailnet stays."""
        core = self.core
        with core.write():
            tailnet = core.get_tailnet(tailnet_id)
            if tailnet_id == DEFAULT_TAILNET:
                raise InvalidArgument("the default tailnet cannot be deleted")
            users = [u for u in core.users.values() if u.tailnet_id == tailnet_id]
            if users:
                nodes = sum(1 for n in core.nodes.values() if n.tailnet_id == tailnet_id)
                raise Conflict(
                    f"tailnet {tailnet.name!r} is not empty: it has {len(users)} user(s) and "
                    f"{nodes} node(s); delete them first"
                )
            core.store.delete_tailnet(tailnet_id)
            core.remove_tailnet(tailnet_id)
