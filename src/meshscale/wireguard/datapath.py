"""The transport hot path: seal TUN packets, open transport messages
(docs/protocol/wireguard.md §5.1-5.2).

Written for throughput: batches in, per-peer grouping, one seal call per peer per batch
(transport.py), no per-packet logging or events, timers and counters updated once per peer per
batch. Bad packets are dropped and counted by reason in `drops`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from .allowedips import AllowedIPs
from .constants import MESSAGE_TRANSPORT, MIN_TRANSPORT_SIZE, REJECT_AFTER_TIME
from .messages import TRANSPORT_HEADER
from .peer import Endpoint, Keypair, Peer

if TYPE_CHECKING:
    from collections import deque

_unpack_header = TRANSPORT_HEADER.unpack_from

Message = list[bytes]  # the buffers of one datagram (today one: header + ciphertext + tag)


class DataPath:
    """Mixin for Device: the per-packet paths. Attributes come from Device.__init__."""

    mtu: int
    allowed_ips: AllowedIPs[Peer]
    keypairs: dict[int, Keypair]
    drops: Counter[str]
    lock: AbstractContextManager[object]
    _out: deque[tuple[Endpoint, bytes]]

    # Provided by Device.
    def sendable(self, kp: Keypair | None, now: float) -> bool:
        raise NotImplementedError

    def send_initiation(self, peer: Peer, now: float, *, is_retry: bool = False) -> None: ...
    def promote_next(self, peer: Peer, kp: Keypair, now: float) -> None: ...
    def after_send(self, peer: Peer, kp: Keypair, now: float) -> None: ...
    def after_receive(self, peer: Peer, kp: Keypair, now: float) -> None: ...
    def _authenticated_sent(self, peer: Peer, now: float) -> None: ...
    def _authenticated_received(self, peer: Peer, now: float) -> None: ...
    def _data_sent(self, peer: Peer, now: float) -> None: ...
    def _data_received(self, peer: Peer, now: float) -> None: ...
    def _set_endpoint(self, peer: Peer, ep: Endpoint) -> None: ...

    # ---- send ----------------------------------------------------------------------------

    def seal_for_peer(
        self, peer: Peer, kp: Keypair, packets: Sequence[bytes | memoryview], now: float
    ) -> list[Message]:
        """Encrypt packets under kp; returns one Message per packet. Updates counters."""
        out, nbytes, last = kp.sealer.seal_batch(packets, kp.remote_index, self.mtu)
        if out:
            kp.sent_hint = last
        peer.tx_bytes += nbytes
        return out

    def encrypt_packets(
        self, packets: Sequence[bytes | memoryview], now: float
    ) -> list[tuple[Endpoint, list[Message]]]:
        """Route packets from the TUN by destination, encrypt per peer.

        Packets for a peer without a usable session are staged and a handshake is started
        (its initiation appears in datagrams_to_send()).
        """
        v4 = self.allowed_ips._v4
        v6 = self.allowed_ips._v6
        lookup4 = v4.lookup
        lookup6 = v6.lookup
        from_bytes = int.from_bytes
        groups: dict[Peer, list[bytes | memoryview]] = {}
        drops = 0
        for pkt in packets:
            if not pkt:
                drops += 1
                continue
            version = pkt[0] >> 4
            if version == 4 and len(pkt) >= 20:
                peer = lookup4(from_bytes(pkt[16:20], "big"))
            elif version == 6 and len(pkt) >= 40:
                peer = lookup6(from_bytes(pkt[24:40], "big"))
            else:
                drops += 1
                continue
            if peer is None:
                drops += 1
                continue
            group = groups.get(peer)
            if group is None:
                groups[peer] = [pkt]
            else:
                group.append(pkt)
        if drops:
            self.drops["tx_no_route"] += drops
        result: list[tuple[Endpoint, list[Message]]] = []
        for peer, group in groups.items():
            kp = peer.current
            if not self.sendable(kp, now) or peer.endpoint is None:
                peer.staged.extend(bytes(p) for p in group)
                self.send_initiation(peer, now)
                continue
            assert kp is not None
            result.append((peer.endpoint, self.seal_for_peer(peer, kp, group, now)))
            self._authenticated_sent(peer, now)
            self._data_sent(peer, now)
            self.after_send(peer, kp, now)
        return result

    def flush_staged(self, peer: Peer, now: float) -> None:
        """Send packets staged while there was no session (into datagrams_to_send)."""
        kp = peer.current
        if not self.sendable(kp, now) or peer.endpoint is None:
            return
        assert kp is not None
        staged = []
        while peer.staged:
            staged.append(peer.staged.popleft())
        ep = peer.endpoint
        for parts in self.seal_for_peer(peer, kp, staged, now):
            self._out.append((ep, b"".join(parts)))
        self._authenticated_sent(peer, now)
        self._data_sent(peer, now)

    # ---- receive -------------------------------------------------------------------------

    def decrypt_transport(
        self, batch: Sequence[tuple[bytes | memoryview, Endpoint]], now: float
    ) -> tuple[list[bytes], list[tuple[bytes | memoryview, Endpoint]]]:
        """Open transport messages; returns (inner packets, non-transport datagrams).

        Order per wireguard-go receive.go: index lookup, age, AEAD, replay window (only after
        authentication), key confirmation, roaming, keepalive, length, source address check.
        """
        keypairs = self.keypairs
        v4 = self.allowed_ips._v4
        v6 = self.allowed_ips._v6
        from_bytes = int.from_bytes
        packets: list[bytes] = []
        append = packets.append
        others: list[tuple[bytes | memoryview, Endpoint]] = []
        drops = self.drops
        touched: dict[Peer, tuple[Keypair, Endpoint, int, bool]] = {}
        # Per-batch caches: consecutive packets almost always share keypair and inner source.
        cur_kp: Keypair | None = None
        cur_ep: Endpoint | None = None
        cur_bytes = 0
        cur_data = False
        last_src: bytes = b""
        last_owner: Peer | None = None
        if not isinstance(batch, list):
            batch = list(batch)
        n = len(batch)
        i = 0
        while i < n:
            data, ep = batch[i]
            size = len(data)
            if size < MIN_TRANSPORT_SIZE:
                if size >= 4:
                    others.append((data, ep))  # a handshake type is checked by its handler
                else:
                    drops["short"] += 1
                i += 1
                continue
            mtype, index, _ = _unpack_header(data)
            if mtype != MESSAGE_TRANSPORT:
                others.append((data, ep))
                i += 1
                continue
            kp = keypairs.get(index)
            if kp is None:
                drops["unknown_index"] += 1
                i += 1
                continue
            if kp is not cur_kp and now - kp.created >= REJECT_AFTER_TIME:
                drops["expired_keypair"] += 1
                i += 1
                continue
            # The run of messages under this index: AEAD for all at once, then the replay
            # window (only for the authentic ones), in order.
            results, i, nbytes, last = kp.opener.open_run(batch, i)
            if last >= 0:
                if kp is not cur_kp:
                    if cur_kp is not None:
                        self._touch(touched, cur_kp, cur_ep, cur_bytes, cur_data)  # type: ignore[arg-type]
                    cur_kp, cur_bytes, cur_data = kp, 0, False
                cur_ep = batch[last][1]
                cur_bytes += nbytes
            owner = kp.peer
            for pt in results:
                if pt is None:
                    drops["auth"] += 1
                    continue
                if pt is False:
                    drops["replay"] += 1
                    continue
                if not pt:
                    continue  # keepalive
                cur_data = True
                version = pt[0] >> 4
                if version == 4:
                    if len(pt) < 20:
                        drops["inner_short"] += 1
                        continue
                    total = (pt[2] << 8) | pt[3]
                    if total < 20 or total > len(pt):
                        drops["inner_length"] += 1
                        continue
                    src = pt[12:16]
                    if src != last_src:
                        last_src, last_owner = src, v4.lookup(from_bytes(src, "big"))
                elif version == 6:
                    if len(pt) < 40:
                        drops["inner_short"] += 1
                        continue
                    total = ((pt[4] << 8) | pt[5]) + 40
                    if total > len(pt):
                        drops["inner_length"] += 1
                        continue
                    src = pt[8:24]
                    if src != last_src:
                        last_src, last_owner = src, v6.lookup(from_bytes(src, "big"))
                else:
                    drops["inner_version"] += 1
                    continue
                if last_owner is not owner:
                    drops["source_check"] += 1
                    continue
                append(pt if total == len(pt) else pt[:total])
        if cur_kp is not None:
            self._touch(touched, cur_kp, cur_ep, cur_bytes, cur_data)  # type: ignore[arg-type]
        for peer, (kp, ep, size, had_data) in touched.items():
            peer.rx_bytes += size
            if kp is peer.next:
                self.promote_next(peer, kp, now)
            self._set_endpoint(peer, ep)
            self._authenticated_received(peer, now)
            if had_data:
                self._data_received(peer, now)
            self.after_receive(peer, kp, now)
        return packets, others

    @staticmethod
    def _touch(
        touched: dict[Peer, tuple[Keypair, Endpoint, int, bool]],
        kp: Keypair,
        ep: Endpoint,
        nbytes: int,
        had_data: bool,
    ) -> None:
        prev = touched.get(kp.peer)
        if prev is None:
            touched[kp.peer] = (kp, ep, nbytes, had_data)
        else:
            touched[kp.peer] = (kp, ep, prev[2] + nbytes, prev[3] or had_data)
