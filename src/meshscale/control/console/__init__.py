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
from meshscale.tailcfg import DNSConfig, to_json


def build(state: State, api: API, settings: ConsoleSettings, **kw: Any) -> Console:
    """A Console with every page; ``kw``: sessions, limiter, oidc (see Console)."""
    console = Console(state, api, settings, **kw)
    pages.register(console)
    actions.register(console)
    policypages.register(console)
    return console


def console_for(cfg: ControlConfig, state: State, api: API, dns: DNSConfig) -> Console:
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
