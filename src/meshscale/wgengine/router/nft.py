"""Netfilter for a subnet router or exit node, through libnftables (no ``nft`` process).

One table of our own, ``inet meshscale``, replaced atomically in one transaction, so it never
holds half a rule set and never touches anybody else's tables (docs/protocol/policy.md §5.7,
tailscale's ts-forward/ts-postrouting chains):

    forward      in from the TUN: mark 0x40000/0xff0000, accept
                 out to the TUN with a CGNAT source (v4): drop (anti-spoofing); else accept
    postrouting  marked 0x40000/0xff0000: masquerade (only with SNAT on)

``ruleset`` is pure; ``Netfilter`` loads libnftables with ctypes and runs the text.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

TABLE = "meshscale"
FORWARD_MARK = 0x40000
MARK_MASK = 0xFF0000
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


class NetfilterError(OSError):
    """libnftables is missing or refused the rule set."""


def ruleset(ifname: str, snat: bool) -> str:
    """The ``inet meshscale`` table for TUN ``ifname`` (replacing any previous one)."""
    if not _IFNAME.match(ifname):
        raise ValueError(f"bad interface name {ifname!r}")
    masq = f"    meta mark & {MARK_MASK:#x} == {FORWARD_MARK:#x} masquerade\n" if snat else ""
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{ifname}" meta mark set meta mark & {~MARK_MASK & 0xFFFFFFFF:#x} '
        f"| {FORWARD_MARK:#x}\n"
        f"    meta mark & {MARK_MASK:#x} == {FORWARD_MARK:#x} accept\n"
        f'    oifname "{ifname}" ip saddr 100.64.0.0/10 drop\n'
        f'    oifname "{ifname}" accept\n'
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{masq}"
        "  }\n"
        "}\n"
    )


def teardown() -> str:
    """Remove our table if it is there (idempotent)."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


class Netfilter:
    """A libnftables context in this process's network namespace."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise NetfilterError(f"libnftables not available: {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NetfilterError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, text: str) -> None:
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            line = next((ln for ln in err.splitlines() if ln.strip()), "error")
            raise NetfilterError(f"nftables: {line}")

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
