"""The built-in admin console at ``/admin`` (issue 17; spec dns-oidc-console §4).

Server-rendered Jinja2 pages with a little same-origin JavaScript, no CDN, over the same
operations as ``/api/v1`` (:meth:`meshscale.control.api.API.invoke`). See :mod:`.app` for
sessions and CSRF, :mod:`.machines` for the machines list, :mod:`.pages` and
:mod:`.actions` for what each page shows and does.
"""

from __future__ import annotations

import json
from typing import Any

from meshscale.control.api import API
from meshscale.control.auth.pages import oidc_pages
from meshscale.control.config import ControlConfig
from meshscale.control.console import actions, pages, policypages
from meshscale.control.console.app import PREFIX, Console, ConsoleSettings
from meshscale.control.console.oidc import ConsoleOIDC
from meshscale.control.console.session import LoginLimiter, SessionStore
from meshscale.control.state import State
from meshscale.tailcfg import DERPMap, DNSConfig, to_json


def build(state: State, api: API, settings: ConsoleSettings, **kw: Any) -> Console:
    """A Console with every page; ``kw``: sessions, limiter, oidc (see Console)."""
    console = Console(state, api, settings, **kw)
    pages.register(console)
    actions.register(console)
    policypages.register(console)
    return console


def facts(cfg: ControlConfig, derp: DERPMap | None) -> tuple[tuple[str, str], ...]:
    """The settings page: what the config file decides, never a secret."""
    o = cfg.oidc
    out = [
        ("server_url", cfg.server_url), ("policy.mode", cfg.policy.mode),
        ("node expiry", str(cfg.node_expiry) if cfg.node_expiry else "never"),
        ("ephemeral node inactivity timeout", str(cfg.ephemeral_node_inactivity_timeout)),
        ("database", cfg.database.type),
        ("OIDC", f"issuer {o.issuer}, client {o.client_id}" if o.enabled else "off"),
    ]  # fmt: skip
    if o.enabled:
        out += [("OIDC allowed domains", ", ".join(o.allowed_domains) or "any"),
                ("OIDC allowed users", ", ".join(o.allowed_users) or "any"),
                ("OIDC allowed groups", ", ".join(o.allowed_groups) or "any"),
                ("OIDC PKCE", o.pkce_method if o.pkce_enabled else "off")]  # fmt: skip
    admins = (*cfg.console_admin_users, *cfg.console_admin_groups)
    out.append(("console admins (OIDC)", ", ".join(admins) or "none"))
    for rid, region in sorted((derp.Regions if derp is not None else {}).items()):
        hosts = ", ".join(n.HostName for n in region.Nodes)
        out.append((f"DERP region {rid}", f"{region.RegionCode} ({region.RegionName}): {hosts}"))
    return tuple(out)


def console_for(
    cfg: ControlConfig, state: State, api: API, dns: DNSConfig, derp: DERPMap | None = None
) -> Console:
    """The console as ``meshscale-control serve`` runs it, from the server configuration."""
    d = cfg.dns
    view = {
        "magic_dns": d.magic_dns, "base_domain": d.base_domain,
        "override_local_dns": d.override_local_dns, "nameservers": list(d.nameservers_global),
        "split": {k: list(v) for k, v in d.nameservers_split.items()},
        "search_domains": list(d.search_domains),
        "extra_records": [{"name": r.name, "type": r.type, "value": r.value}
                          for r in d.extra_records],
    }  # fmt: skip
    settings = ConsoleSettings(
        server_url=cfg.server_url, base_domain=d.base_domain,
        policy_writable=cfg.policy.mode == "database", oidc_enabled=cfg.oidc.enabled,
        dns=view, dns_preview=json.dumps(to_json(dns), indent=2, sort_keys=True),
        facts=facts(cfg, derp),
    )  # fmt: skip
    oidc = None
    if cfg.oidc.enabled and (cfg.console_admin_users or cfg.console_admin_groups):
        pages = oidc_pages(cfg, state)
        assert pages is not None
        oidc = ConsoleOIDC(pages, cfg.server_url, cfg.console_admin_users,
                           cfg.console_admin_groups)  # fmt: skip
    return build(state, api, settings, oidc=oidc)


__all__ = [
    "PREFIX", "Console", "ConsoleSettings", "LoginLimiter", "SessionStore", "build", "console_for",
]  # fmt: skip
