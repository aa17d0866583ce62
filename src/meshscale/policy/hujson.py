"""HuJSON (JSON with ``//`` and ``/* */`` comments and trailing commas) → located JSON values.

The policy file format (docs/protocol/policy.md §1.1). :func:`parse` returns a tree of
:class:`JNode` so that the validator can name the line and column of any bad value;
:func:`to_json` turns HuJSON text into plain JSON. Limits keep a hostile policy from costing
memory or stack: at most :data:`MAX_BYTES` (1 MiB, far above any real policy; a 10 MB
text is refused) and :data:`MAX_DEPTH` nested arrays/objects. Every failure is a
:class:`~meshscale.policy.manager.PolicyError` naming ``line:column``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Final

from meshscale.policy.manager import PolicyError

_DIGITS = frozenset("0123456789")  # str.isdigit() also takes "²" and other Unicode digits

MAX_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 64

JValue = str | int | float | bool | None | list["JNode"] | dict[str, "JNode"]


@dataclass(slots=True)
class JNode:
    """One JSON value and where it starts (1-based line and column)."""

    value: JValue
    line: int
    col: int
    # For objects: where each key starts, for "unknown field" messages.
    key_pos: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def at(self) -> str:
        return f"{self.line}:{self.col}"

    def plain(self) -> object:
        """The value without positions (dicts, lists, scalars)."""
        v = self.value
        if isinstance(v, list):
            return [n.plain() for n in v]
        if isinstance(v, dict):
            return {k: n.plain() for k, n in v.items()}
        return v


_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_WS: Final = " \t\r\n"


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.line_start = 0

    def pos(self, i: int | None = None) -> tuple[int, int]:
        i = self.i if i is None else i
        # line_start tracks self.i; for earlier offsets recount (only on error paths).
        if i >= self.line_start:
            return self.line, i - self.line_start + 1
        line = self.s.count("\n", 0, i) + 1
        return line, i - (self.s.rfind("\n", 0, i) + 1) + 1

    def fail(self, msg: str, i: int | None = None) -> PolicyError:
        line, col = self.pos(i)
        return PolicyError(f"invalid HuJSON at {line}:{col}: {msg}")

    def advance_to(self, j: int) -> None:
        nl = self.s.count("\n", self.i, j)
        if nl:
            self.line += nl
            self.line_start = self.s.rfind("\n", self.i, j) + 1
        self.i = j

    def skip(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in _WS:
                self.advance_to(self.i + 1)
            elif s.startswith("//", self.i):
                j = s.find("\n", self.i)
                self.advance_to(n if j < 0 else j)
            elif s.startswith("/*", self.i):
                j = s.find("*/", self.i + 2)
                if j < 0:
                    raise self.fail("unterminated /* comment")
                self.advance_to(j + 2)
            else:
                return

    def value(self, depth: int) -> JNode:
        self.skip()
        line, col = self.pos()
        if self.i >= len(self.s):
            raise self.fail("unexpected end of input")
        c = self.s[self.i]
        if c in "{[":
            if depth >= MAX_DEPTH:
                raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
            return self.obj(line, col, depth) if c == "{" else self.arr(line, col, depth)
        if c == '"':
            return JNode(self.string(), line, col)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.advance_to(self.i + len(word))
                return JNode(val, line, col)
        if c == "-" or c in _DIGITS:
            return JNode(self.number(), line, col)
        raise self.fail(f"unexpected character {c!r}")

    def obj(self, line: int, col: int, depth: int) -> JNode:
        self.advance_to(self.i + 1)
        out: dict[str, JNode] = {}
        node = JNode(out, line, col)
        while True:
            self.skip()
            if self.s.startswith("}", self.i):
                self.advance_to(self.i + 1)
                return node
            if not self.s.startswith('"', self.i):
                raise self.fail("expected a string key or '}'")
            kpos = self.pos()
            key = self.string()
            if key in out:
                raise self.fail(f"duplicate key {key!r}", self.i - 1)
            self.skip()
            if not self.s.startswith(":", self.i):
                raise self.fail("expected ':'")
            self.advance_to(self.i + 1)
            out[key] = self.value(depth + 1)
            node.key_pos[key] = kpos
            self.skip()
            if self.s.startswith(",", self.i):
                self.advance_to(self.i + 1)
            elif not self.s.startswith("}", self.i):
                raise self.fail("expected ',' or '}'")

    def arr(self, line: int, col: int, depth: int) -> JNode:
        self.advance_to(self.i + 1)
        out: list[JNode] = []
        while True:
            self.skip()
            if self.s.startswith("]", self.i):
                self.advance_to(self.i + 1)
                return JNode(out, line, col)
            out.append(self.value(depth + 1))
            self.skip()
            if self.s.startswith(",", self.i):
                self.advance_to(self.i + 1)
            elif not self.s.startswith("]", self.i):
                raise self.fail("expected ',' or ']'")

    def string(self) -> str:
        s, i, n = self.s, self.i + 1, len(self.s)
        parts: list[str] = []
        start = i
        while True:
            if i >= n:
                raise self.fail("unterminated string")
            c = s[i]
            if c == '"':
                parts.append(s[start:i])
                self.advance_to(i + 1)
                return "".join(parts)
            if c == "\\":
                parts.append(s[start:i])
                e = s[i + 1 : i + 2]
                if e == "u":
                    hexd = s[i + 2 : i + 6]
                    if len(hexd) != 4 or any(h not in "0123456789abcdefABCDEF" for h in hexd):
                        raise self.fail("bad \\u escape", i)
                    code = int(hexd, 16)
                    low = s[i + 8 : i + 12]
                    if 0xD800 <= code < 0xDC00 and s[i + 6 : i + 8] == "\\u" and _is_low(low):
                        code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                        i += 6  # a UTF-16 surrogate pair is one character
                    parts.append(chr(code))
                    i += 6
                elif e in _ESCAPES:
                    parts.append(_ESCAPES[e])
                    i += 2
                else:
                    raise self.fail("bad escape in string", i)
                start = i
            elif c < " ":
                raise self.fail("control character in string", i)
            else:
                i += 1

    def number(self) -> int | float:
        s, j, n = self.s, self.i, len(self.s)
        if s[j] == "-":
            j += 1
        k = j
        while j < n and s[j] in _DIGITS:
            j += 1
        if j == k or (s[k] == "0" and j - k > 1):
            raise self.fail("bad number")
        is_float = False
        if j < n and s[j] == ".":
            is_float = True
            j += 1
            k = j
            while j < n and s[j] in _DIGITS:
                j += 1
            if j == k:
                raise self.fail("bad number")
        if j < n and s[j] in "eE":
            is_float = True
            j += 1
            if j < n and s[j] in "+-":
                j += 1
            k = j
            while j < n and s[j] in _DIGITS:
                j += 1
            if j == k:
                raise self.fail("bad number")
        text = s[self.i : j]
        if j - self.i > 40:
            raise self.fail("number too long")
        self.advance_to(j)
        if is_float:
            f = float(text)
            if math.isinf(f):
                raise self.fail("number out of range")
            return f
        return int(text)


def _is_low(hexd: str) -> bool:
    try:
        return len(hexd) == 4 and 0xDC00 <= int(hexd, 16) <= 0xDFFF
    except ValueError:
        return False


def parse(text: str | bytes) -> JNode:
    """Parse HuJSON text into located values; PolicyError (with line:column) if invalid."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise PolicyError(f"policy is {len(text)} bytes; the limit is {MAX_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"policy is not UTF-8 (byte {e.start})") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise PolicyError(f"policy is {size} bytes; the limit is {MAX_BYTES}")
    text = text.removeprefix("\ufeff")
    p = _Parser(text)
    node = p.value(0)
    p.skip()
    if p.i != len(text):
        raise p.fail("unexpected text after the value")
    return node


def to_json(text: str | bytes) -> str:
    """Standardize HuJSON to plain JSON text."""
    return json.dumps(parse(text).plain(), ensure_ascii=False)
