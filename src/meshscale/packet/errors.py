"""The packet package's one error.

    ValueError
     └── ParseError   a header or frame is malformed (too short, wrong version, bad lengths)

Parsers raise ParseError. The hot-path splitter (tso) and coalescer (gro) never raise on bad
input: they drop the packet and count the reason (docs/style.md §6).
"""

from __future__ import annotations


class ParseError(ValueError):
    """A packet or header could not be parsed."""
