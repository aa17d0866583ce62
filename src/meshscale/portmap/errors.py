"""The one exception every port-mapping parser raises."""

from __future__ import annotations


class ParseError(ValueError):
    """The bytes are not the port-mapping message the caller asked for."""
