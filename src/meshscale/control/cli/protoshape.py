"""What Headscale's CLI prints under ``-o json``: its protobuf messages through Go's
``encoding/json`` (not protojson, which the REST API speaks).

So: snake_case field names, 64-bit ids as numbers, enums as numbers, timestamps as
``{"seconds": N, "nanos": N}``, and every zero value (false, 0, "", [], null) left out
(``omitempty`` on every generated field). Scripts written against ``headscale ... -o json``
read these shapes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
TIMESTAMP_FIELDS: Final = frozenset({"created_at", "last_seen", "expiry", "expiration"})
ID_FIELDS: Final = frozenset({"id", "node_id", "user_id", "tailnet_id"})
DEFAULT_TAILNET: Final = 1  # migration 0006's `default`; meshscale's only field beyond Headscale's
REGISTER_METHODS: Final = {
    "REGISTER_METHOD_UNSPECIFIED": 0,
    "REGISTER_METHOD_AUTH_KEY": 1,
    "REGISTER_METHOD_CLI": 2,
    "REGISTER_METHOD_OIDC": 3,
}


def snake(name: str) -> str:
    return _CAMEL.sub(r"_\1", name).lower()


def timestamp(text: str) -> dict[str, int] | str:
    """RFC 3339 -> Go's view of a timestamppb.Timestamp; text that is not one stays."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    if parsed.tzinfo is None:
        return text
    seconds = int(parsed.timestamp() // 1)
    out = {"seconds": seconds}
    if parsed.microsecond:
        out["nanos"] = parsed.microsecond * 1000
    return out


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def go_json(value: Any) -> Any:
    """The REST payload ``value`` (protojson) in the shape Headscale's CLI prints."""
    if isinstance(value, list):
        return [go_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = snake(key)
        if name in ID_FIELDS and isinstance(item, str) and item.isdigit():
            item = int(item)
        elif name in TIMESTAMP_FIELDS and isinstance(item, str):
            item = timestamp(item)
        elif name == "register_method" and isinstance(item, str):
            item = REGISTER_METHODS.get(item, 0)
        else:
            item = go_json(item)
        if name == "tailnet_id" and item == DEFAULT_TAILNET:
            continue  # a one-tailnet server prints exactly Headscale's shape
        if not _empty(item) or item is True:
            out[name] = item
    return out
