"""Prefs: what the user asked for with ``meshscale up`` (tailscale ipn.Prefs, the subset we run).

Stored in the state file and changed only through the local API. Field names follow
upstream's JSON so ``meshscale debug prefs`` style output is familiar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_CONTROL_URL = "http://127.0.0.1:8080"


class PrefsError(ValueError):
    """Stored or requested prefs are malformed."""


@dataclass(slots=True)
class Prefs:
    ControlURL: str = ""
    Hostname: str = ""
    WantRunning: bool = False
    LoggedOut: bool = False
    CorpDNS: bool = True  # --accept-dns; no DNS is configured yet, the value is only kept
    AdvertiseTags: list[str] = field(default_factory=list)  # sent as Hostinfo.RequestTags
    # Routes (docs: docs/protocol/policy.md §5). AdvertiseRoutes holds both /0s for
    # --advertise-exit-node, as upstream's prefs do.
    AdvertiseRoutes: list[str] = field(default_factory=list)
    RouteAll: bool = False  # --accept-routes (off by default on Linux)
    ExitNodeID: str = ""  # the chosen exit node's StableID, resolved from ExitNodeIP
    ExitNodeIP: str = ""  # --exit-node as given (an IP; the CLI resolves names)
    ExitNodeAllowLANAccess: bool = False
    NoSNAT: bool = False  # --snat-subnet-routes=false

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Prefs:
        if not isinstance(obj, dict):
            raise PrefsError("prefs must be a JSON object")
        out = cls()
        for f in fields(cls):
            if f.name not in obj:
                continue
            v = obj[f.name]
            want = type(getattr(out, f.name))
            if type(v) is not want:
                raise PrefsError(f"prefs: {f.name} must be {want.__name__}")
            if isinstance(v, list) and not all(isinstance(x, str) for x in v):
                raise PrefsError(f"prefs: {f.name} must be a list of strings")
            setattr(out, f.name, v)
        return out
