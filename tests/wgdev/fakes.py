"""Hand-written fakes for the UAPI server and the daemon: an in-memory device and engines."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import socket
import struct
import threading
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshscale.key import clamp
from meshscale.wireguard import Endpoint
from meshscale.wireguard.uapi import (
    IPC_ERROR_PORT_IN_USE,
    UNSET,
    DeviceSnapshot,
    IPNetwork,
    PeerSnapshot,
    SetRequest,
    UAPIError,
)


def public_key(private_key: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


@dataclass
class FakePeer:
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    last_handshake_time_ns: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0


class FakeBackend:
    """An in-memory UAPIBackend applying SetRequest the way wireguard-go does. Records calls.

    ``taken_ports``: listen ports that fail with EADDRINUSE. ``fail_next``: an exception the next
    call raises (to test the server's error path).
    """

    def __init__(self, *, taken_ports: set[int] | None = None) -> None:
        self.private_key: bytes | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[bytes, FakePeer] = {}
        self.taken_ports = taken_ports or set()
        self.fail_next: Exception | None = None
        self.sets: list[SetRequest] = []
        self.gets = 0
        self._lock = threading.Lock()

    def uapi_get(self) -> DeviceSnapshot:
        with self._lock:
            self.gets += 1
            self._maybe_fail()
            return DeviceSnapshot(
                private_key=self.private_key,
                listen_port=self.listen_port,
                fwmark=self.fwmark,
                peers=[
                    PeerSnapshot(
                        public_key=key,
                        preshared_key=p.preshared_key,
                        endpoint=p.endpoint,
                        last_handshake_time_ns=p.last_handshake_time_ns,
                        tx_bytes=p.tx_bytes,
                        rx_bytes=p.rx_bytes,
                        persistent_keepalive_interval=p.persistent_keepalive_interval,
                        allowed_ips=list(p.allowed_ips),
                    )
                    for key, p in self.peers.items()
                ],
            )

    def uapi_set(self, request: SetRequest) -> None:
        with self._lock:
            self.sets.append(request)
            self._maybe_fail()
            if request.private_key is not UNSET:
                # wireguard-go clamps the scalar and reports the clamped key.
                self.private_key = clamp(request.private_key) if request.private_key else None
            if request.listen_port is not None:
                if request.listen_port in self.taken_ports:
                    raise UAPIError(IPC_ERROR_PORT_IN_USE, "address already in use")
                self.listen_port = request.listen_port or 40000  # 0: "any free port"
            if request.fwmark is not None:
                self.fwmark = request.fwmark
            if request.replace_peers:
                self.peers.clear()
            own = public_key(self.private_key) if self.private_key else None
            for change in request.peers:
                if change.public_key == own:
                    continue
                if change.remove:
                    self.peers.pop(change.public_key, None)
                    continue
                peer = self.peers.get(change.public_key)
                if peer is None:
                    if change.update_only:
                        continue
                    peer = self.peers[change.public_key] = FakePeer()
                if change.preshared_key is not None:
                    peer.preshared_key = change.preshared_key if any(change.preshared_key) else None
                if change.endpoint is not None:
                    peer.endpoint = change.endpoint
                if change.persistent_keepalive_interval is not None:
                    peer.persistent_keepalive_interval = change.persistent_keepalive_interval
                if change.replace_allowed_ips:
                    peer.allowed_ips.clear()
                for prefix in change.allowed_ips_remove:
                    if prefix in peer.allowed_ips:
                        peer.allowed_ips.remove(prefix)
                for prefix in change.allowed_ips_add:
                    for other in self.peers.values():  # a prefix belongs to one peer only
                        if prefix in other.allowed_ips:
                            other.allowed_ips.remove(prefix)
                    peer.allowed_ips.append(prefix)

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error


class FakeEngine(FakeBackend):
    """A DeviceEngine without a data plane. It closes itself when the file named by the
    FAKE_ENGINE_CLOSE_FILE environment variable appears (the daemon tests' "interface gone")."""

    def __init__(self, ifname: str) -> None:
        super().__init__()
        self.ifname = ifname
        self.started = False
        self._closed = threading.Event()
        self._close_file = os.environ.get("FAKE_ENGINE_CLOSE_FILE")

    @classmethod
    def create(cls, ifname: str, *, tun_fd: int | None, mtu: int) -> FakeEngine:
        if os.environ.get("FAKE_ENGINE_FAIL"):
            raise OSError(19, "fake engine told to fail")
        return cls(ifname)

    def start(self) -> None:
        self.started = True
        if os.environ.get("FAKE_ENGINE_SIGNAL_ON_START"):
            # SIGTERM after the socket is bound but before the event loop owns the signals.
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        self._closed.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        if self._close_file and os.path.exists(self._close_file):
            self._closed.set()
        return self._closed.wait(timeout)


_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class TunFakeEngine(FakeEngine):
    """A FakeEngine that owns a real TUN interface and closes when the interface is deleted."""

    def __init__(self, ifname: str, fd: int) -> None:
        super().__init__(ifname)
        self.fd = fd

    @classmethod
    def create(cls, ifname: str, *, tun_fd: int | None, mtu: int) -> TunFakeEngine:
        if tun_fd is None:
            tun_fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            ifreq = struct.pack("16sH22x", ifname.encode(), _IFF_TUN | _IFF_NO_PI)
            fcntl.ioctl(tun_fd, _TUNSETIFF, ifreq)
        return cls(ifname, tun_fd)

    def wait_closed(self, timeout: float | None = None) -> bool:
        try:
            socket.if_nametoindex(self.ifname)
        except OSError:
            self._closed.set()
        return self._closed.wait(timeout)

    def close(self) -> None:
        if not self._closed.is_set():
            super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)
