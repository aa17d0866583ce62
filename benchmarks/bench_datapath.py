"""Per-packet CPU cost of the WireGuard core's hot path, against the bare AEAD call.

Two Device cores with an established session; 64-packet batches of full-size (1420-byte) and
ACK-size (52-byte) IPv4 packets through encrypt_packets and decrypt_transport. The baseline,
measured in the same run, is one ChaCha20Poly1305 call per packet: the ratio is what our
routing, padding, headers, replay window, source check and bookkeeping add.

    .venv/bin/python benchmarks/bench_datapath.py
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for the tests' pair helper
from tests.wireguard.helpers import Pair, ipv4_packet

BATCH = 64
ROUNDS = 400


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(size: int) -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * (size - 20))
    p.send(p.a, [pkt])
    p.deliver()
    batch = [memoryview(pkt)] * BATCH
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = struct.Struct("<4xQ").pack

    def bare_seal() -> None:
        for i in range(ROUNDS * BATCH):
            aead.encrypt(nonce(i), pkt, None)

    def seal() -> None:
        for _ in range(ROUNDS):
            p.a.dev.encrypt_packets(batch, p.now)

    sealed = [
        [(memoryview(b"".join(m)), p.a.ep) for m in p.a.dev.encrypt_packets(batch, p.now)[0][1]]
        for _ in range(ROUNDS * 5)
    ]
    it = iter(sealed)

    def bare_open() -> None:
        ct = aead.encrypt(nonce(1), pkt, None)
        for _ in range(ROUNDS * BATCH):
            aead.decrypt(nonce(1), ct, None)

    def open_() -> None:
        for _ in range(ROUNDS):
            p.b.dev.decrypt_transport(next(it), p.now)

    n = ROUNDS * BATCH
    t_bare_seal = best_of(bare_seal) / n * 1e6
    t_seal = best_of(seal) / n * 1e6
    t_bare_open = best_of(bare_open) / n * 1e6
    t_open = best_of(open_) / n * 1e6
    print(
        f"{size:5d}-byte packets: encrypt_packets {t_seal:.2f} us/pkt "
        f"(bare AEAD {t_bare_seal:.2f}, ratio {t_seal / t_bare_seal:.2f}x); "
        f"decrypt_transport {t_open:.2f} us/pkt "
        f"(bare AEAD {t_bare_open:.2f}, ratio {t_open / t_bare_open:.2f}x)"
    )


def main() -> None:
    for size in (1420, 52):
        measure(size)


if __name__ == "__main__":
    main()
