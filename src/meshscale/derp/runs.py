"""Zero-copy forwarding: SendPacket frames rewritten in place into RecvPacket frames.

A SendPacket frame (type 0x04, u32 length, 32-byte destination key, packet) and the RecvPacket
the relay forwards for it (type 0x05, the same length, 32-byte source key, the same packet)
have the same size and layout. So the relay rewrites 33 bytes of each frame in the read buffer
and forwards a view of the whole frame; consecutive frames to one destination are one view and
one write, and the payload is never copied in user space (docs/protocol/derp-disco-stun.md
§1.6 for the frames).

``rewrite_run`` walks such a run. It is pure (no routing decisions): the caller has resolved
the destination of the first frame and decides what a run may contain. The C version
(``_runs.c``, built at install) and the Python one here give identical results; the tests
check both.
"""

from __future__ import annotations

from collections.abc import Callable

from . import frames as F

_HDR = F.HEADER
_SEND = int(F.FrameType.SEND_PACKET)
_RECV = int(F.FrameType.RECV_PACKET)
_KEY_LEN = F.KEY_LEN
_MIN_RUN_FRAME = F.FRAME_HEADER_LEN + _KEY_LEN

RewriteRun = Callable[[memoryview, int, int, bytes, bytes, int], tuple[int, int, int]]


def rewrite_run_py(
    buf: memoryview, pos: int, end: int, dst_key: bytes, src_key: bytes, max_len: int
) -> tuple[int, int, int]:
    """Rewrite, from ``pos`` on, each complete SendPacket frame of ``buf[:end]`` whose length
    is in ``[32, max_len]`` and whose destination key is ``dst_key`` into a RecvPacket from
    ``src_key``; stop at the first frame that is not one (or not complete).

    Returns (offset after the last rewritten frame, frames rewritten, packet bytes in them).
    """
    if len(dst_key) != _KEY_LEN or len(src_key) != _KEY_LEN:
        raise ValueError("keys are 32 bytes")
    unpack = _HDR.unpack_from
    frames = nbytes = 0
    while end - pos >= _MIN_RUN_FRAME:
        ftype, length = unpack(buf, pos)
        fend = pos + 5 + length
        if ftype != _SEND or not _KEY_LEN <= length <= max_len or fend > end:
            break
        k = pos + 5
        if buf[k : k + _KEY_LEN] != dst_key:
            break
        buf[pos] = _RECV
        buf[k : k + _KEY_LEN] = src_key
        frames += 1
        nbytes += length - _KEY_LEN
        pos = fend
    return pos, frames, nbytes


rewrite_run: RewriteRun
# A read buffer of n bytes. The C one is not zeroed (_runs.c says why that is safe); the
# fallback is a plain bytearray.
read_buffer: Callable[[int], bytearray]
try:  # the walk in C (_runs.c, built at install); the Python one above is the fallback
    from ._runs import read_buffer as _c_read_buffer
    from ._runs import rewrite_run as _c_rewrite_run
except ImportError:  # built without a compiler
    rewrite_run = rewrite_run_py
    read_buffer = bytearray
    HAVE_C = False
else:
    rewrite_run = _c_rewrite_run
    read_buffer = _c_read_buffer
    HAVE_C = True
