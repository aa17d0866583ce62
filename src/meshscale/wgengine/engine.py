"""The data-plane engine: a WireGuard Device core driven by a TUN device and a bind.

Three OS threads (docs/protocol/wireguard.md §15):

    TX       TUN read_batch -> Device.encrypt_packets -> bind.send (UDP GSO)
    RX       bind.receive (UDP GRO) -> Device.decrypt_transport -> TUN write_batch (TCP GRO)
             handshake messages -> bounded queue -> control
    control  handshakes (100-230 us of DH each, kept off the data path), timers, UAPI

The GIL is released in every syscall, so TX and RX overlap; AEAD holds the GIL, so more data
threads would not help. The engine makes no protocol decisions: it feeds the core, flushes
its output and sleeps until the core's next deadline (``io.timer.ThreadTimer``): the control
thread wakes for a queued handshake, a UAPI change, a due timer, or a poke from the data
path (rate-limited, see ``POKE_INTERVAL``), and an idle interface wakes nobody.

Seams for the node agent: `bind` is pluggable (`bind.Bind`; magicbind multiplexes disco and
DERP on it), and `filter_in` / `filter_out` see every batch of inner packets after
decryption / before encryption; `intercept` takes packets for the node itself (quad-100)
out of each TUN batch and `inject` writes its answers back. The UAPI entry points
(`uapi_get`, `uapi_set`) serve both meshscale-wireguard's socket and meshscaled's backend.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from meshscale.io.timer import ThreadTimer
from meshscale.io.tun import TunClosedError, TunDevice, TunGoneError
from meshscale.wireguard import Device, Endpoint
from meshscale.wireguard.constants import DEFAULT_MTU, UNDER_LOAD_AFTER_TIME, UNDER_LOAD_QUEUE
from meshscale.wireguard.uapi import (
    IPC_ERROR_INVALID,
    IPC_ERROR_PORT_IN_USE,
    UNSET,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    UAPIError,
)

from . import trace
from .bind import Bind, BindClosed
from .udpbind import UDPBind

log = logging.getLogger("meshscale.wgengine")

HANDSHAKE_QUEUE_SIZE = 1024  # wireguard-go QueueHandshakeSize: bounds memory under a flood
TX_BATCH = 128  # packets per TUN read batch (conn.IdealBatchSize)
# Seconds a deadline armed on the TX/RX threads may wait to be seen by the control thread
# (io.timer): the data path arms none less than a second away.
POKE_INTERVAL = 0.25

PacketFilter = Callable[[list[bytes]], list[bytes]]
Intercept = Callable[[Sequence[bytes | memoryview]], list[bytes | memoryview]]


class Tun(Protocol):
    name: str
    mtu: int

    def read_batch(
        self, max_packets: int = ..., *, pad: bool = ..., lone: bool = ...
    ) -> list[memoryview]: ...

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int: ...

    def close(self) -> None: ...


class Engine:
    """A running WireGuard interface. Thread-safe UAPI entry points."""

    def __init__(
        self,
        tun: Tun,
        bind: Bind,
        *,
        mtu: int = DEFAULT_MTU,
        clock: Callable[[], float] = time.monotonic,
        timer: ThreadTimer | None = None,
    ) -> None:
        """``clock`` (monotonic seconds) and ``timer`` (the control thread's sleep) are
        injectable so that tests can run the control loop on a fake clock."""
        self.tun = tun
        self.bind = bind
        self.lock = threading.RLock()
        self._clock = clock
        self.device = Device(
            rand=os.urandom,
            lock=self.lock,
            mtu=mtu,
            wall_offset_ns=time.time_ns() - int(clock() * 1e9),
        )
        self.timer = (
            timer if timer is not None else ThreadTimer(interval=POKE_INTERVAL, clock=clock)
        )
        self.listen_port = 0
        self.fwmark = 0
        self.filter_in: PacketFilter | None = None
        self.filter_out: PacketFilter | None = None
        # Packets from the TUN that the node answers itself (quad-100 DNS): takes them out
        # of the batch and returns the rest; answers come back through `inject`.
        self.intercept: Intercept | None = None
        self._handshakes: queue.Queue[tuple[bytes, Endpoint]] = queue.Queue(HANDSHAKE_QUEUE_SIZE)
        self._under_load_until = 0.0
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, int] = {}

    @classmethod
    def create(cls, ifname: str, *, tun_fd: int | None = None, mtu: int = DEFAULT_MTU) -> Engine:
        """Open the TUN interface and a UDP bind (not yet listening)."""
        if tun_fd is not None:
            # An inherited descriptor (WG_TUN_FD): its name and offload flags come from the fd.
            tun = TunDevice.from_fd(tun_fd, gro_verify=False)
        else:
            # WireGuard authenticated every packet, so GRO need not re-verify L4 checksums
            # (the kernel implementation likewise trusts Poly1305; docs/protocol/wireguard.md §15
            # item 3).
            tun = TunDevice.open(ifname, mtu=mtu, gro_verify=False)
        return cls(tun, UDPBind(), mtu=mtu)

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with self.lock:
            self.listen_port = self.bind.open(self.listen_port)
        trace_dir = os.environ.get(trace.ENV)
        if trace_dir:  # bench-only stage stamps (wgengine/trace.py)
            trace.install(self, trace_dir)
        for name, target in (("tx", self._tx_loop), ("rx", self._rx_loop), ("ctl", self._control)):
            t = threading.Thread(target=target, name=f"wg-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.timer.wake()
        self.bind.close()
        self.tun.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    # ---- threads -------------------------------------------------------------------------

    def _flush(self) -> None:
        for ep, data in self.device.datagrams_to_send():
            try:
                self.bind.send_one(ep, data)
            except OSError:
                self._count("send")

    def _tx_loop(self) -> None:
        read = self.tun.read_batch
        while not self._closed.is_set():
            try:
                # pad=True: packets arrive zero-padded to WireGuard's length, so sealing
                # needs no copy (the IP header still carries the real length). lone=True: a
                # packet after idle is sealed and sent before looking for more (latency).
                packets: list[bytes] | list[memoryview] = read(TX_BATCH, pad=True, lone=True)
            except (TunClosedError, TunGoneError) as exc:
                log.info("TUN device closed or gone: %s", exc)
                self.close()
                return
            except OSError:
                self._count("tun_read")
                continue
            self._tx_batch(packets)

    def _tx_batch(self, packets: list[bytes] | list[memoryview]) -> None:
        """Packets from the TUN: filter, seal, send; then tell the timer (TX thread)."""
        if self.intercept is not None:
            packets = self.intercept(packets)  # type: ignore[assignment]
        if self.filter_out is not None:
            packets = self.filter_out([bytes(p) for p in packets])
        send = self.bind.send
        for ep, msgs in self.device.encrypt_packets(packets, self._clock()):
            try:
                send(ep, msgs)
            except OSError:
                self._count("send")
        if self.device._out:
            self._flush()
        # Sending data may have armed a timer (new handshake, initiation retransmit).
        self.timer.poke()

    def _rx_loop(self) -> None:
        while not self._closed.is_set():
            try:
                batch = self.bind.receive()
            except BindClosed:
                continue
            except OSError:
                self._count("recv")
                continue
            if not self._rx_batch(batch):
                return

    def _rx_batch(self, batch: Sequence[tuple[bytes | memoryview, Endpoint]]) -> bool:
        """Datagrams from the bind: open, filter, write to the TUN; handshakes to the control
        thread (RX thread). False when the TUN is gone."""
        packets, others = self.device.decrypt_transport(batch, self._clock())
        if others:
            handshakes = self._handshakes
            for data, ep in others:
                try:
                    handshakes.put_nowait((bytes(data), ep))
                except queue.Full:
                    self.device.drops["handshake_queue_full"] += 1
            self.timer.wake()
        if self.device._out:
            self._flush()
        # Receiving data may have armed a timer (passive keepalive, rekey on receive).
        self.timer.poke()
        # The TUN write comes last: what the kernel sends back from inside it (a ping reply,
        # an ACK's burst) wakes the TX thread, which then waits for the GIL until this
        # thread blocks again, so as little as possible should run after the write.
        if packets:
            if self.filter_in is not None:
                packets = self.filter_in(packets)
            try:
                self.tun.write_batch(packets)
            except (TunClosedError, TunGoneError):
                self.close()
                return False
            except OSError:
                self._count("tun_write")
        return True

    def inject(self, packets: Sequence[bytes]) -> None:
        """Write packets the node itself originates (DNS answers) into the TUN; any thread."""
        try:
            self.tun.write_batch(packets)
        except (TunClosedError, TunGoneError):
            self.close()
        except OSError:
            self._count("tun_write")

    def _control(self) -> None:
        """Handshakes and timers: sleeps until the device's next deadline, a queued
        handshake (wake) or a data-path poke; never on a tick."""
        dev = self.device
        clock = self._clock
        while not self._closed.is_set():
            if self._handshakes.empty():
                self.timer.wait(dev.get_timer())
            # Under load (device.go IsUnderLoad): a deep queue now, or within the last second.
            now = clock()
            if self._handshakes.qsize() >= UNDER_LOAD_QUEUE:
                self._under_load_until = now + UNDER_LOAD_AFTER_TIME
            under_load = now < self._under_load_until
            for _ in range(HANDSHAKE_QUEUE_SIZE):
                try:
                    data, ep = self._handshakes.get_nowait()
                except queue.Empty:
                    break
                dev.receive_handshake(data, ep, clock(), under_load=under_load)
                self._flush()
            deadline = dev.get_timer()
            now = clock()
            if deadline is not None and deadline <= now:
                dev.handle_timer(now)
            self._flush()

    # ---- UAPI ----------------------------------------------------------------------------

    def uapi_get(self) -> DeviceSnapshot:
        dev = self.device
        with self.lock:
            peers = [
                PeerSnapshot(
                    public_key=p.public_key,
                    preshared_key=p.preshared_key,
                    endpoint=p.endpoint,
                    last_handshake_time_ns=p.last_handshake_ns,
                    tx_bytes=p.tx_bytes,
                    rx_bytes=p.rx_bytes,
                    persistent_keepalive_interval=p.persistent_keepalive_interval,
                    allowed_ips=dev.allowed_ips.prefixes(p),
                )
                for p in dev.peers.values()
            ]
            return DeviceSnapshot(
                private_key=dev.private_key,
                listen_port=self.listen_port,
                fwmark=self.fwmark,
                peers=peers,
            )

    def uapi_set(self, req: SetRequest) -> None:
        dev = self.device
        now = self._clock()
        with self.lock:
            if req.private_key is not UNSET:
                dev.set_private_key(req.private_key)
            if req.listen_port is not None and req.listen_port != self.listen_port:
                if self._threads:
                    try:
                        self.listen_port = self.bind.open(req.listen_port)
                    except OSError as exc:
                        if exc.errno == errno.EADDRINUSE:
                            raise UAPIError(IPC_ERROR_PORT_IN_USE, str(exc)) from exc
                        raise UAPIError(IPC_ERROR_INVALID, str(exc)) from exc
                else:
                    self.listen_port = req.listen_port
            if req.fwmark is not None:
                self.fwmark = req.fwmark
            if req.replace_peers:
                for key in list(dev.peers):
                    dev.remove_peer(key)
            for change in req.peers:
                if change.public_key == dev.public_key:
                    continue  # wireguard-go ignores a peer equal to ourselves
                if change.remove:
                    dev.remove_peer(change.public_key)
                    continue
                peer = dev.peers.get(change.public_key)
                if peer is None:
                    if change.update_only:
                        continue
                    peer = dev.add_peer(change.public_key)
                if change.preshared_key is not None:
                    dev.set_preshared_key(peer, change.preshared_key)
                if change.endpoint is not None:
                    dev.set_endpoint(peer, change.endpoint)
                if change.replace_allowed_ips:
                    dev.allowed_ips.remove_peer(peer)
                for net in change.allowed_ips_remove:
                    dev.allowed_ips.remove(net, peer)
                for net in change.allowed_ips_add:
                    dev.allowed_ips.insert(net, peer)
                if change.persistent_keepalive_interval is not None:
                    dev.set_persistent_keepalive(peer, change.persistent_keepalive_interval, now)
        self._flush()
        self.timer.wake()
