"""Native (_aead.c) and pure-Python transport AEAD give identical bytes, and both match
libsodium's ChaCha20-Poly1305 (an independent implementation) in WireGuard's nonce layout.
The extension is built by scripts/install, so its absence fails here rather than skipping."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from meshscale.wireguard import _aead
from meshscale.wireguard.transport import PyOpener, PySealer

KEY = bytes(range(32))


def sodium_message(key: bytes, receiver: int, counter: int, pt: bytes) -> bytes:
    nonce = bytes(4) + counter.to_bytes(8, "little")
    header = b"\x04\x00\x00\x00" + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little")
    return header + crypto_aead_chacha20poly1305_ietf_encrypt(pt, None, nonce, key)


def test_python_sealer_matches_libsodium_with_wireguard_padding() -> None:
    pkts = [b"", b"a", b"x" * 16, b"y" * 1419, b"z" * 1420, b"w" * 1500]
    msgs, nbytes, last = PySealer(KEY).seal_batch(pkts, 0x01020304, 1420)
    padded = [b"", b"a" + bytes(15), b"x" * 16, b"y" * 1419 + b"\0", b"z" * 1420, b"w" * 1500]
    assert [b"".join(m) for m in msgs] == [
        sodium_message(KEY, 0x01020304, i, p) for i, p in enumerate(padded)
    ]
    assert last == len(pkts) - 1
    assert nbytes == sum(len(m[0]) for m in msgs)


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    receiver=st.integers(0, 2**32 - 1),
    mtu=st.sampled_from([0, 1280, 1420]),
    batches=st.lists(st.lists(st.binary(max_size=1600), max_size=6), min_size=1, max_size=4),
)
def test_native_seal_is_byte_identical_to_python(
    key: bytes, receiver: int, mtu: int, batches: list[list[bytes]]
) -> None:
    native, py = _aead.Sealer(key), PySealer(key)
    for batch in batches:
        views = [memoryview(p) for p in batch]
        got = native.seal_batch(views, receiver, mtu)
        want = py.seal_batch(batch, receiver, mtu)
        assert got[0] == want[0] and got[1] == want[1]
        if batch:
            assert got[2] == want[2]


@pytest.mark.parametrize("native", [False, True])
def test_opener_authenticates_then_applies_replay_window(native: bool) -> None:
    opener = _aead.Opener(KEY) if native else PyOpener(KEY)
    msgs = [sodium_message(KEY, 7, c, b"p%d" % c) for c in (0, 1, 5, 9000)]
    assert opener.open(msgs[1]) == b"p1"
    assert opener.open(memoryview(msgs[0])) == b"p0"
    assert opener.open(msgs[1]) is False  # replay
    forged = bytearray(msgs[2])
    forged[-1] ^= 1
    assert opener.open(bytes(forged)) is None  # a forgery does not touch the window
    assert opener.open(msgs[2]) == b"p5"
    assert opener.open(msgs[3]) == b"p9000"
    assert opener.open(msgs[2]) is False  # now more than 8128 behind
    with pytest.raises(ValueError):
        opener.open(b"\x04" + bytes(20))


@settings(max_examples=40, deadline=None)
@given(counters=st.lists(st.integers(0, 20000), max_size=60))
def test_native_and_python_openers_agree(counters: list[int]) -> None:
    native, py = _aead.Opener(KEY), PyOpener(KEY)
    for c in counters:
        msg = sodium_message(KEY, 1, c, b"data")
        assert native.open(msg) == py.open(msg)


def test_native_counters_unique_across_threads() -> None:
    sealer = _aead.Sealer(os.urandom(32))
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            msgs, _, _ = sealer.seal_batch([b"x" * 1400] * 8, 1, 1420)
            with lock:
                seen.extend(int.from_bytes(m[0][8:16], "little") for m in msgs)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(seen) == list(range(3 * 200 * 8))


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.just("msg"), st.integers(1, 2), st.integers(0, 9000), st.booleans()),
            st.tuples(st.just("other"), st.integers(0, 40), st.just(0), st.just(False)),
        ),
        min_size=1,
        max_size=40,
    ),
    start=st.integers(0, 39),
)
def test_open_run_native_and_python_agree(
    items: list[tuple[str, int, int, bool]], start: int
) -> None:
    """Runs stop at another index or a non-transport message; forgeries are None, replays
    False; the authentic byte count and last index match open() one by one."""
    batch: list[tuple[bytes | memoryview, object]] = []
    for kind, receiver, counter, forge in items:
        if kind == "other":
            batch.append((bytes([1]) + bytes(receiver), ("ep", 0)))
            continue
        msg = bytearray(sodium_message(KEY, receiver, counter, b"pkt%d" % counter))
        if forge:
            msg[-1] ^= 1
        batch.append((memoryview(bytes(msg)), ("ep", len(batch))))
    start %= len(batch)
    native, py = _aead.Opener(KEY), PyOpener(KEY)
    if batch[start][0][0] != 4:
        for opener in (native, py):
            with pytest.raises(ValueError):
                opener.open_run(batch, start)
        return
    got = native.open_run(batch, start)
    assert got == py.open_run(batch, start)
    results, end, nbytes, last = got
    assert end == start + len(results)
    one_by_one = PyOpener(KEY)
    want = [one_by_one.open(m) for m, _ in batch[start:end]]
    assert results == want
    ok = [start + i for i, r in enumerate(want) if r is not None and r is not False]
    assert last == (ok[-1] if ok else -1)
    assert nbytes == sum(len(batch[i][0]) for i in ok)
    if end < len(batch):
        nxt = batch[end][0]
        assert nxt[0] != 4 or nxt[4:8] != batch[start][0][4:8]
