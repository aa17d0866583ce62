"""Bench-only stage stamps on the data path: MESHSCALE_WG_TRACE=DIR.

`install(engine)` (called by Engine.start only when the variable is set) wraps the engine's
TUN read, bind receive and batch handlers on the instance, so the default path carries no
check at all. Each lone-packet batch (one packet in) appends one line to DIR/trace-PID.txt:

    tx <read returned> <sealed> <sent> <done>       (time.time_ns, comparable across daemons)
    rx <recv returned> <opened> <written> <done>

benchmarks/bench_wireguard.py --trace merges the two daemons' files into one ping's timeline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from meshscale.wireguard import Endpoint

from .bind import Bind

ENV = "MESHSCALE_WG_TRACE"
_FLUSH_EVERY = 64  # lines buffered between writes (the write is off the measured stages)


class _Tun(Protocol):
    def read_batch(
        self, max_packets: int = ..., *, pad: bool = ..., lone: bool = ...
    ) -> list[memoryview]: ...

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int: ...


class Traceable(Protocol):
    """What install() wraps: wgengine.Engine (named structurally: engine.py imports us)."""

    @property
    def tun(self) -> _Tun: ...
    @property
    def bind(self) -> Bind: ...

    def _tx_batch(self, packets: list[bytes] | list[memoryview]) -> None: ...
    def _rx_batch(self, batch: Sequence[tuple[bytes | memoryview, Endpoint]]) -> bool: ...
    def close(self) -> None: ...


def install(engine: Traceable, directory: str) -> None:
    path = Path(directory) / f"trace-{os.getpid()}.txt"
    lines: list[str] = []
    now = time.time_ns
    tx_stamp = [0]
    rx_stamp = [0]

    def emit(line: str) -> None:
        lines.append(line)
        if len(lines) >= _FLUSH_EVERY:
            with path.open("a") as f:
                f.write("".join(lines))
            lines.clear()

    tun_read = engine.tun.read_batch

    def read_batch(
        max_packets: int = 128, *, pad: bool = False, lone: bool = False
    ) -> list[memoryview]:
        out = tun_read(max_packets, pad=pad, lone=lone)
        tx_stamp[0] = now()
        return out

    bind_receive = engine.bind.receive

    def receive() -> list[tuple[bytes | memoryview, Endpoint]]:
        out = bind_receive()
        rx_stamp[0] = now()
        return out

    send = engine.bind.send
    marks: list[int] = []

    def traced_send(ep: Endpoint, msgs: list[list[bytes]]) -> None:
        marks.append(now())
        send(ep, msgs)
        marks.append(now())

    write = engine.tun.write_batch

    def traced_write(packets: Sequence[bytes | bytearray | memoryview]) -> int:
        marks.append(now())
        n = write(packets)
        marks.append(now())
        return n

    tx_batch: Callable[[list[bytes] | list[memoryview]], None] = engine._tx_batch
    rx_batch = engine._rx_batch

    def traced_tx(packets: list[bytes] | list[memoryview]) -> None:
        marks.clear()
        tx_batch(packets)
        if len(packets) == 1 and len(marks) == 2:
            emit(f"tx {tx_stamp[0]} {marks[0]} {marks[1]} {now()}\n")

    def traced_rx(batch: Sequence[tuple[bytes | memoryview, Endpoint]]) -> bool:
        marks.clear()
        ok = rx_batch(batch)
        if len(batch) == 1 and len(marks) == 2:
            emit(f"rx {rx_stamp[0]} {marks[0]} {marks[1]} {now()}\n")
        return ok

    engine.tun.read_batch = read_batch  # type: ignore[method-assign]
    engine.bind.receive = receive  # type: ignore[method-assign]
    engine.bind.send = traced_send  # type: ignore[method-assign,assignment]
    engine.tun.write_batch = traced_write  # type: ignore[method-assign]
    engine._tx_batch = traced_tx  # type: ignore[method-assign]
    engine._rx_batch = traced_rx  # type: ignore[method-assign]
    # Keep the last lines when the engine closes.
    close = engine.close

    def traced_close() -> None:
        if lines:
            with path.open("a") as f:
                f.write("".join(lines))
            lines.clear()
        close()

    engine.close = traced_close  # type: ignore[method-assign]
