"""Lab helpers for the TUN and UDP tests and benchmarks/bench_offload.py.

`call_in_netns` runs a function in a helper thread that has entered a namespace (setns(2)
affects only the calling thread), so a TUN created there belongs to the lab, never to the
machine. `Forwarder` joins two TunDevices back to back with two threads, like the data plane's
TX and RX threads without the crypto.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from meshscale.io.tun import TunDevice, TunError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def call_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in namespace `ns` (from /var/run/netns) in a short-lived thread."""
    result: list[T] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(10.0)
    if errors:
        raise errors[0]
    if not result:
        raise TimeoutError(f"call_in_netns({ns}) did not finish")
    return result[0]


def ns_ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


@dataclass
class Side:
    ns: str
    tun: TunDevice
    ip4: str
    ip6: str


def open_tun_side(ns: str, name: str, idx: int, offload: bool, **kw: bool) -> Side:
    """A TunDevice in `ns` with 10.77.0.<idx>/24 and fd77::<idx>/64."""
    tun = call_in_netns(ns, lambda: TunDevice.open(name, 1420, offload, **kw))
    ip4, ip6 = f"10.77.0.{idx}", f"fd77::{idx}"
    ns_ip(ns, "addr", "add", f"{ip4}/24", "dev", tun.name)
    ns_ip(ns, "-6", "addr", "add", f"{ip6}/64", "dev", tun.name, "nodad")
    return Side(ns, tun, ip4, ip6)


class Forwarder:
    """Two threads moving batches a -> b and b -> a until the devices are closed."""

    def __init__(self, a: TunDevice, b: TunDevice, pad: bool = False) -> None:
        self.a, self.b = a, b
        self.pad = pad
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._pump, args=(a, b), daemon=True),
            threading.Thread(target=self._pump, args=(b, a), daemon=True),
        ]

    def _pump(self, src: TunDevice, dst: TunDevice) -> None:
        read, write, pad = src.read_batch, dst.write_batch, self.pad
        try:
            while True:
                write(read(pad=pad))
        except TunError:
            return  # closed (or gone): the normal way out
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self) -> Forwarder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.a.close()
        self.b.close()
        for t in self.threads:
            t.join(5.0)
        assert not any(t.is_alive() for t in self.threads), "forwarder thread did not stop"
