"""MagicDNS-safe node names (``given_name``).

A given name is one DNS label: 1-63 characters of ``a-z0-9-``, not starting or ending with
a hyphen (RFC 1123). It is derived from the hostname the client reports; two nodes never
share one, so a collision gets a numeric suffix (``laptop``, ``laptop-1``, ``laptop-2``).
An admin may rename a node to any valid, unused label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from meshscale.control.models import InvalidArgument

MAX_LABEL_LENGTH: Final = 63  # RFC 1035 section 2.3.4, in characters
FALLBACK_NAME: Final = "node"

_LABEL_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_INVALID_RUN: Final = re.compile(r"[^a-z0-9-]+")


MAX_TAGS: Final = 64  # per node or key; bounds the policy work one node can cause
_TAG_RE: Final = re.compile(r"^tag:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class InvalidName(InvalidArgument):
    """A given name or tag is not valid."""


def is_valid_label(name: str) -> bool:
    return bool(_LABEL_RE.match(name))


def validate_given_name(name: str) -> str:
    """Return ``name`` if it is a valid label, else raise :class:`InvalidName`."""
    if not is_valid_label(name):
        raise InvalidName(
            f"invalid node name {name[:80]!r}: use 1-63 of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )
    return name


def sanitize_hostname(hostname: str) -> str:
    """Turn a client-reported hostname into a label (never raises).

    The first DNS label is used (``laptop.local`` -> ``laptop``); letters are lower-cased,
    every run of other characters becomes one hyphen.
    """
    first = hostname.strip().split(".", 1)[0].lower()
    label = _INVALID_RUN.sub("-", first).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:MAX_LABEL_LENGTH].strip("-")
    return label or FALLBACK_NAME


def unique_given_name(base: str, taken: Callable[[str], bool], max_tries: int = 100_000) -> str:
    """First of ``base``, ``base-1``, ``base-2``, ... for which ``taken`` is false.

    The base is shortened so that the suffix still fits in one label.
    """
    base = sanitize_hostname(base)
    if not taken(base):
        return base
    for n in range(1, max_tries):
        suffix = f"-{n}"
        candidate = base[: MAX_LABEL_LENGTH - len(suffix)].rstrip("-") + suffix
        if not taken(candidate):
            return candidate
    raise InvalidName(f"no free name derived from {base!r}")


def validate_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated ``tag:name`` strings; raises InvalidName."""
    out = tuple(dict.fromkeys(tags))
    if len(out) > MAX_TAGS:
        raise InvalidName(f"too many tags ({len(out)} > {MAX_TAGS})")
    for tag in out:
        if not _TAG_RE.match(tag):
            raise InvalidName(f"invalid tag {tag[:70]!r}: tags look like 'tag:name'")
    return tuple(sorted(out))
