"""JSON codec for tailcfg dataclasses, following Go's encoding/json as tailscale uses it.

Rules (docs/protocol/control.md §0 and 4.7):

* Attribute names are the Go field names, which are the JSON keys. A class may rename keys
  through ``JSON_NAMES`` (for example ``OverTLSPublicKeyResponse`` uses lower camel case).
* Decoding is tolerant: unknown keys are ignored, keys match case-insensitively as in Go,
  ``null`` leaves the default, a missing key leaves the default.
* Encoding follows ``omitempty``/``omitzero``: fields listed in the class's ``OMIT`` are left
  out when ``None``; if their type is not optional they are also left out when zero (0, "",
  False, empty list or dict). An optional field (a Go pointer) that is set is always emitted,
  so ``Online=False`` is sent.
* Keys use upstream text forms. ``None`` stands for the zero key; a non-omitted zero key is
  written as the prefix and 64 zeros. ``datetime`` values are RFC 3339 in UTC with Go's
  trimmed nanosecond fraction; ``None`` is Go's zero time ``0001-01-01T00:00:00Z``.
* ``bytes`` is standard base64; ``Any`` is raw JSON passed through.

Decoding bad input raises only ``ParseError`` (a ValueError).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from meshscale.key import DiscoPublic, InvalidKeyError, MachinePublic, NodePublic

T = TypeVar("T")

ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_JSON_DEPTH = 64  # nesting levels; deeper input is refused (stack exhaustion)

KEY_TYPES: tuple[type[Any], ...] = (NodePublic, DiscoPublic, MachinePublic)


class ParseError(ValueError):
    """A tailcfg message could not be decoded."""


_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def format_time(t: datetime | None) -> str:
    """Go's time.Time MarshalJSON (RFC 3339 with trimmed fraction), always in UTC."""
    if t is None:
        return ZERO_TIME
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    t = t.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += ("." + f"{t.microsecond:06d}").rstrip("0")
    return base + "Z"


def parse_time(s: str) -> datetime | None:
    m = _TIME_RE.match(s)
    if m is None:
        raise ParseError(f"bad time {s[:40]!r}")
    if s == ZERO_TIME or s.startswith("0001-01-01T00:00:00"):
        return None
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    try:
        micro = int((frac or "0").ljust(6, "0")[:6])
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), micro, tzinfo=UTC)
        if tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            t -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    except (ValueError, OverflowError) as exc:
        raise ParseError(f"bad time {s[:40]!r}") from exc
    return t


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    key: str
    omit: bool
    optional: bool
    enc: Encoder
    dec: Decoder
    zero_key_prefix: str | None  # emit this zero-key text for None (non-omitted key fields)
    is_time: bool


_SPECS: dict[type[Any], tuple[list[_Field], dict[str, _Field]]] = {}


def _ident(v: Any) -> Any:
    return v


def _fail(path: str, want: str, v: Any) -> ParseError:
    return ParseError(f"{path}: want {want}, got {type(v).__name__}")


def _dec_int(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise _fail(path, "integer", v)
    return v


def _dec_float(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(path, "number", v)
    return float(v)


def _dec_str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _fail(path, "string", v)
    return v


def _dec_bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(path, "bool", v)
    return v


def _dec_bytes(v: Any, path: str) -> bytes:
    s = _dec_str(v, path)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(f"{path}: bad base64") from exc


def _enc_bytes(v: bytes) -> str:
    return base64.b64encode(v).decode()


def _dec_time(v: Any, path: str) -> datetime | None:
    return parse_time(_dec_str(v, path))


def _key_decoder(cls: type[Any]) -> Decoder:
    def dec(v: Any, path: str) -> Any:
        s = _dec_str(v, path)
        try:
            k = cls.from_text(s)
        except InvalidKeyError as exc:
            raise ParseError(f"{path}: {exc}") from exc
        return None if k.is_zero() else k

    return dec


def _enc_key(v: Any) -> str:
    return str(v.text())


def _converters(tp: Any) -> tuple[Encoder, Decoder]:
    """Return (encode, decode) for a resolved type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _converters(args[0])
    if tp is Any:
        return _ident, lambda v, path: v
    if tp is bool:
        return _ident, _dec_bool
    if tp is int:
        return _ident, _dec_int
    if tp is float:
        return _ident, _dec_float
    if tp is str:
        return _ident, _dec_str
    if tp is bytes:
        return _enc_bytes, _dec_bytes
    if tp is datetime:
        return format_time, _dec_time
    if isinstance(tp, type) and issubclass(tp, KEY_TYPES):
        return _enc_key, _key_decoder(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        ienc, idec = _converters(item)

        def enc_list(v: list[Any]) -> list[Any]:
            return [None if x is None else ienc(x) for x in v]

        def dec_list(v: Any, path: str) -> list[Any]:
            if not isinstance(v, list):
                raise _fail(path, "array", v)
            return [None if x is None else idec(x, f"{path}[{i}]") for i, x in enumerate(v)]

        return enc_list, dec_list
    if origin is dict:
        ktype, vtype = typing.get_args(tp)
        venc, vdec = _converters(vtype)
        int_keys = ktype is int

        def enc_dict(v: dict[Any, Any]) -> dict[str, Any]:
            return {str(k): (None if x is None else venc(x)) for k, x in v.items()}

        def dec_dict(v: Any, path: str) -> dict[Any, Any]:
            if not isinstance(v, dict):
                raise _fail(path, "object", v)
            out: dict[Any, Any] = {}
            for k, x in v.items():
                if int_keys:
                    try:
                        kk: Any = int(k)
                    except ValueError as exc:
                        raise ParseError(f"{path}: bad integer key {k[:20]!r}") from exc
                else:
                    kk = k
                out[kk] = None if x is None else vdec(x, f"{path}.{k}")
            return out

        return enc_dict, dec_dict
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        cls = tp
        return to_json, lambda v, path: _decode_obj(cls, v, path)
    raise TypeError(f"unsupported type {tp!r}")


def _spec(cls: type[Any]) -> tuple[list[_Field], dict[str, _Field]]:
    spec = _SPECS.get(cls)
    if spec is not None:
        return spec
    hints = typing.get_type_hints(cls)
    omit: frozenset[str] = getattr(cls, "OMIT", frozenset())
    names: dict[str, str] = getattr(cls, "JSON_NAMES", {})
    fields: list[_Field] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        base = tp
        if optional:
            (base,) = [a for a in typing.get_args(tp) if a is not type(None)]
        enc, dec = _converters(tp)
        zero_prefix = None
        if isinstance(base, type) and issubclass(base, KEY_TYPES):
            zero_prefix = str(typing.cast(Any, base).PREFIX) + ":" + "0" * 64
        fields.append(
            _Field(
                attr=f.name,
                key=names.get(f.name, f.name),
                omit=f.name in omit,
                optional=optional and base is not datetime and zero_prefix is None,
                enc=enc,
                dec=dec,
                zero_key_prefix=zero_prefix,
                is_time=base is datetime,
            )
        )
    spec = (fields, {f.key.lower(): f for f in fields})
    _SPECS[cls] = spec
    return spec


def to_json(obj: Any) -> dict[str, Any]:
    """Encode a tailcfg dataclass into JSON-ready Python values."""
    fields, _ = _spec(type(obj))
    out: dict[str, Any] = {}
    for f in fields:
        v = getattr(obj, f.attr)
        if v is None:
            if f.omit:
                continue
            if f.zero_key_prefix is not None:
                out[f.key] = f.zero_key_prefix
            elif f.is_time:
                out[f.key] = ZERO_TIME
            else:
                out[f.key] = None
            continue
        if f.omit and not f.optional and not v:  # Go's zero value: 0, "", b"", false, empty
            continue
        out[f.key] = f.enc(v)
    return out


def _decode_obj(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        raise _fail(path or cls.__name__, "object", data)
    _, by_key = _spec(cls)
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        f = by_key.get(k.lower())
        if f is None or v is None:
            continue
        kwargs[f.attr] = f.dec(v, f"{path}.{f.key}" if path else f.key)
    return cls(**kwargs)


def from_json(cls: type[T], data: Any) -> T:
    """Decode JSON-shaped Python values into ``cls``; raises ParseError."""
    try:
        return _decode_obj(cls, data, "")
    except RecursionError as exc:
        raise ParseError("input nested too deeply") from exc


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, as Go's json.Marshal writes them."""
    return json.dumps(to_json(obj), separators=(",", ":"), ensure_ascii=False).encode()


def loads(cls: type[T], raw: bytes | str) -> T:
    """Parse JSON bytes into ``cls``; any malformed input raises ParseError."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ParseError(f"bad JSON: {exc}") from exc
    return from_json(cls, data)
