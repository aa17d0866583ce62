"""The WireGuard cross-platform UAPI: the text protocol ``wg`` speaks to userspace daemons.

Performs no I/O. ``UAPIParser`` is driven by bytes read from one connection (and its EOF) and
yields typed requests; ``format_get`` and ``format_errno`` build the answers. The client side
(in ``uapi_client``) lets tests and tools talk to any implementation, wireguard-go included.

Wire format (docs/protocol/wireguard.md §9; wireguard-go device/uapi.go; wireguard-tools
src/ipc-uapi.h). Lines are ``key=value\\n``; an empty line ends a request or an answer::

    get=1\\n\\n                     ->  private_key=<hex>\\n listen_port=N\\n fwmark=N\\n
                                       public_key=<hex>\\n preshared_key=<hex>\\n
                                       protocol_version=1\\n endpoint=IP:port\\n
                                       last_handshake_time_sec=N\\n last_handshake_time_nsec=N\\n
                                       tx_bytes=N\\n rx_bytes=N\\n
                                       persistent_keepalive_interval=N\\n allowed_ip=P/L\\n ...
                                       errno=0\\n\\n
    set=1\\n private_key=.. listen_port=.. fwmark=.. replace_peers=true
             public_key=.. (starts a peer) update_only=true remove=true preshared_key=..
             endpoint=.. persistent_keepalive_interval=.. replace_allowed_ips=true
             allowed_ip=P/L  allowed_ip=-P/L (remove)  protocol_version=1
             \\n                   ->  errno=0\\n\\n   or   errno=-22\\n\\n

Keys are 64 hex digits (sent lowercase; either case accepted, as Go's hex decoder does).

Differences from wireguard-go, all invisible to ``wg``: wireguard-go applies a ``set`` line by line
and stops at the first bad line, leaving the earlier lines applied and the connection out of step.
This parser reads the whole request first, so a bad request changes nothing and the connection
stays usable. The EOF rule is the same as wireguard-go's: a ``set`` cut short by EOF counts as
complete.

Errors::

    ValueError
    └── UAPIError            .errno: negative errno sent as ``errno=N``; .fatal: framing lost
"""

from __future__ import annotations

import enum
import errno as _errno
import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from .peer import Endpoint

# The errno values wireguard-go answers with (ipc/uapi_unix.go), negated as on the wire.
IPC_ERROR_IO: Final = -_errno.EIO  # -5: a read failed or a line was too long
IPC_ERROR_PROTOCOL: Final = -_errno.EPROTO  # -71: a line without '=', an unknown operation
IPC_ERROR_INVALID: Final = -_errno.EINVAL  # -22: an unknown key or a bad value
IPC_ERROR_PORT_IN_USE: Final = -_errno.EADDRINUSE  # -98: listen_port or fwmark could not be applied
IPC_ERROR_UNKNOWN: Final = -55  # ENOANO: any other failure (wireguard-go hard-codes 55)

# Bounds. Only root may connect (the socket is 0700), but one stuck or hostile client must not
# exhaust the daemon's memory, because the daemon carries everyone's traffic.
MAX_LINE_SIZE: Final = 64 * 1024  # bytes, newline included; Go's bufio.Scanner token limit, so
# we reject the same lines wireguard-go does. Stops unbounded buffering of one endless line.
MAX_REQUEST_SIZE: Final = 4 * 1024 * 1024  # bytes per set request; about 20k peers
MAX_REQUEST_LINES: Final = 65536  # lines per set request
# The two request limits stop memory exhaustion: a set request is parsed whole before it is
# applied, so its parsed objects (about 300 bytes per allowed IP) live until the blank line.
MAX_ANSWER_SIZE: Final = 64 * 1024 * 1024  # bytes of a get answer a client accepts (~200k peers);
# stops a broken or hostile daemon from growing a client's buffer without end.

KEY_SIZE: Final = 32  # bytes
_ZERO_KEY: Final = bytes(KEY_SIZE)

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unset(enum.Enum):
    """Marker type for "this request does not touch the field"."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET


class UAPIError(ValueError):
    """A UAPI request or answer is malformed, or applying it failed.

    ``errno`` is the negative errno sent back as ``errno=N`` (see ``IPC_ERROR_*``). ``fatal``
    means the connection's framing is lost and the server must close it after answering.
    """

    def __init__(self, errno: int, message: str = "", *, fatal: bool = False) -> None:
        if errno >= 0:
            raise ValueError(f"UAPI errno must be negative, got {errno}")
        super().__init__(message or f"UAPI error {errno}")
        self.errno = errno
        self.fatal = fatal


# ---- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetRequest:
    """``get=1``: dump the device."""


@dataclass(frozen=True, slots=True)
class PeerChange:
    """One ``public_key=`` section of a set request; ``None`` fields are left unchanged.

    Semantics (what wireguard-go's line-by-line application amounts to):
    ``remove`` deletes the peer and ignores everything else. ``update_only`` applies the change
    only if the peer exists. Otherwise the peer is created if missing. Then: ``replace_allowed_ips``
    drops all its prefixes, ``allowed_ips_remove`` drops those prefixes if this peer holds them,
    ``allowed_ips_add`` adds prefixes (moving them from any other peer). A prefix is in at most one
    of the two lists (the last line about it wins), so the order between the lists does not
    matter. Prefixes have their host bits masked off. A section for the device's own public key
    must be ignored by the backend. ``preshared_key`` of 32 zero bytes means "no PSK".
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips_add: list[IPNetwork] = field(default_factory=list)
    allowed_ips_remove: list[IPNetwork] = field(default_factory=list)
    protocol_version: int | None = None


@dataclass(frozen=True, slots=True)
class SetRequest:
    """``set=1``: change the device; apply fields in this order, then ``peers`` in order.

    ``private_key``: ``UNSET`` leaves it, ``None`` clears it (all-zero hex on the wire), bytes set
    it (the backend clamps it, as wireguard-go does). ``listen_port`` 0 means "any free port".
    ``fwmark`` 0 clears the mark. ``replace_peers`` removes every peer before ``peers`` apply.
    """

    private_key: bytes | Unset | None = field(default=UNSET, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


Request: TypeAlias = GetRequest | SetRequest


# ---- snapshots (answers to get) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """One peer as reported by ``get``."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    last_handshake_time_ns: int = 0  # Unix time in ns; 0 if there was no handshake yet
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0  # seconds; 0 = off
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """The device as reported by ``get``. ``listen_port`` 0: not bound; ``fwmark`` 0: none."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


# ---- value codecs (Go's strconv and net/netip rules) ---------------------------------------------

_HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")
_DIGITS = re.compile(rb"[0-9]+")


def _invalid(message: str) -> UAPIError:
    return UAPIError(IPC_ERROR_INVALID, message)


def _ascii(value: bytes, what: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _invalid(f"{what}: not ASCII") from None


def _parse_key(value: bytes, what: str) -> bytes:
    if _HEX_KEY.fullmatch(value) is None:
        raise _invalid(f"{what}: want 64 hex digits")
    return bytes.fromhex(value.decode("ascii"))


def _parse_uint(value: bytes, maximum: int, what: str) -> int:
    # strconv.ParseUint(s, 10, bits): digits only, no sign, leading zeros allowed. Strip the zeros
    # before int() so a 60 KiB run of digits cannot hit Python's int-from-str digit limit.
    if _DIGITS.fullmatch(value) is None:
        raise _invalid(f"{what}: not a decimal number")
    digits = value.lstrip(b"0") or b"0"
    if len(digits) > 20 or int(digits) > maximum:
        raise _invalid(f"{what}: out of range")
    return int(digits)


def _parse_true(value: bytes, what: str) -> bool:
    if value != b"true":
        raise _invalid(f"{what}: invalid value")
    return True


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _invalid("invalid IP address") from None


def _addr_text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    # Go prints IPv4-mapped IPv6 addresses with a dotted tail; Python 3.11 does not.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        scope = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{scope}"
    return str(addr)


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``IP:port`` or ``[IPv6%zone]:port`` as netip.ParseAddrPort does.

    Returns (canonical IP text, port); raises UAPIError(-22).
    """
    if not text.isascii():
        raise _invalid("endpoint: not ASCII")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise _invalid("endpoint: not IP:port")
    bracketed = host.startswith("[")
    if bracketed:
        if len(host) < 2 or not host.endswith("]"):
            raise _invalid("endpoint: missing ]")
        host = host[1:-1]
    port = _parse_uint(port_text.encode("ascii"), 0xFFFF, "endpoint port")
    addr = _parse_ip(host)
    if bracketed != (addr.version == 6):
        raise _invalid("endpoint: brackets are for IPv6 addresses, and IPv6 needs them")
    return _addr_text(addr), port


def format_endpoint(endpoint: Endpoint) -> str:
    """``IP:port`` or ``[IPv6]:port``, as Go's AddrPort.String prints it."""
    host, port = endpoint
    addr = ipaddress.ip_address(host)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"endpoint port out of range: {port}")
    if addr.version == 6:
        return f"[{_addr_text(addr)}]:{port}"
    return f"{addr}:{port}"


def _parse_prefix(text: str) -> IPNetwork:
    # netip.ParsePrefix: no zone, prefix length in decimal without leading zeros or sign.
    addr_text, sep, bits_text = text.rpartition("/")
    if not sep:
        raise _invalid("allowed_ip: no '/'")
    if "%" in addr_text:
        raise _invalid("allowed_ip: zones are not allowed in a prefix")
    if (
        not bits_text.isascii()
        or not bits_text.isdigit()
        or (len(bits_text) > 1 and bits_text[0] == "0")
    ):
        raise _invalid("allowed_ip: bad prefix length")
    addr = _parse_ip(addr_text)
    if len(bits_text) > 3 or int(bits_text) > addr.max_prefixlen:
        raise _invalid("allowed_ip: prefix length out of range")
    return ipaddress.ip_network((addr, int(bits_text)), strict=False)


def _prefix_text(net: IPNetwork) -> str:
    return f"{_addr_text(net.network_address)}/{net.prefixlen}"


# ---- the server-side parser --------------------------------------------------------------------


class _State(enum.Enum):
    OP = "op"  # waiting for "get=1\n" or "set=1\n"
    GET = "get"  # got "get=1\n", waiting for the terminating "\n"
    SET = "set"  # inside a set request
    CLOSED = "closed"  # EOF or a fatal error: nothing more will be parsed


_GET_OP: Final = b"get=1\n"
_SET_OP: Final = b"set=1\n"


class _PeerBuilder:
    """A peer section being parsed; the last line about a field or prefix wins."""

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.remove = False
        self.update_only = False
        self.preshared_key: bytes | None = None
        self.endpoint: Endpoint | None = None
        self.keepalive: int | None = None
        self.replace_allowed_ips = False
        self.protocol_version: int | None = None
        # Dicts keep insertion order and make "the last line about a prefix wins" O(1).
        self.adds: dict[IPNetwork, None] = {}
        self.removes: dict[IPNetwork, None] = {}

    def build(self) -> PeerChange:
        if self.remove:
            return PeerChange(public_key=self.public_key, remove=True)
        return PeerChange(
            public_key=self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            allowed_ips_add=list(self.adds),
            allowed_ips_remove=list(self.removes),
            protocol_version=self.protocol_version,
        )


class _SetBuilder:
    """A set request being parsed."""

    def __init__(self) -> None:
        self.private_key: bytes | Unset | None = UNSET
        self.listen_port: int | None = None
        self.fwmark: int | None = None
        self.replace_peers = False
        self.peers: list[PeerChange] = []
        self.peer: _PeerBuilder | None = None
        self.error: UAPIError | None = None  # the first bad line; later lines are skipped
        self.size = len(_SET_OP)
        self.lines = 0

    def line(self, line: bytes) -> None:
        key, sep, value = line.partition(b"=")
        if not sep:
            raise UAPIError(IPC_ERROR_PROTOCOL, "failed to parse line: no '='")
        if key == b"public_key":
            self._end_peer()
            self.peer = _PeerBuilder(_parse_key(value, "public_key"))
        elif self.peer is None:
            self._device_line(key, value)
        else:
            self._peer_line(self.peer, key, value)

    def _device_line(self, key: bytes, value: bytes) -> None:
        if key == b"private_key":
            private_key = _parse_key(value, "private_key")
            self.private_key = None if private_key == _ZERO_KEY else private_key
        elif key == b"listen_port":
            self.listen_port = _parse_uint(value, 0xFFFF, "listen_port")
        elif key == b"fwmark":
            self.fwmark = _parse_uint(value, 0xFFFFFFFF, "fwmark")
        elif key == b"replace_peers":
            self.replace_peers = _parse_true(value, "replace_peers")
        else:
            raise _invalid("invalid UAPI device key")

    def _peer_line(self, peer: _PeerBuilder, key: bytes, value: bytes) -> None:
        if key == b"update_only":
            peer.update_only = _parse_true(value, "update_only")
        elif key == b"remove":
            peer.remove = _parse_true(value, "remove")
        elif key == b"preshared_key":
            peer.preshared_key = _parse_key(value, "preshared_key")
        elif key == b"endpoint":
            peer.endpoint = parse_endpoint(_ascii(value, "endpoint"))
        elif key == b"persistent_keepalive_interval":
            peer.keepalive = _parse_uint(value, 0xFFFF, "persistent_keepalive_interval")
        elif key == b"replace_allowed_ips":
            # wireguard-go drops the peer's prefixes at this line, earlier lines' included.
            peer.replace_allowed_ips = _parse_true(value, "replace_allowed_ips")
            peer.adds.clear()
            peer.removes.clear()
        elif key == b"allowed_ip":
            remove = value.startswith(b"-")
            prefix = _parse_prefix(_ascii(value[1:] if remove else value, "allowed_ip"))
            target, other = (peer.removes, peer.adds) if remove else (peer.adds, peer.removes)
            other.pop(prefix, None)
            target.pop(prefix, None)  # re-insert so the order follows the last mention
            target[prefix] = None
        elif key == b"protocol_version":
            if value != b"1":
                raise _invalid("invalid protocol version")
            peer.protocol_version = 1
        else:
            raise _invalid("invalid UAPI peer key")

    def _end_peer(self) -> None:
        if self.peer is not None:
            self.peers.append(self.peer.build())
            self.peer = None

    def finish(self) -> SetRequest:
        self._end_peer()
        return SetRequest(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            replace_peers=self.replace_peers,
            peers=self.peers,
        )


class UAPIParser:
    """Server side of one UAPI connection: bytes in, requests out. Performs no I/O.

    Driven by: ``feed(data)`` for each read and ``feed_eof()`` at EOF. ``next_request()`` returns
    the next complete request, ``None`` when more bytes are needed, or raises ``UAPIError`` for
    a bad request (answer ``format_errno(e.errno)``; if ``e.fatal``, close after answering).
    After a non-fatal error the parser has skipped the whole bad request and goes on.
    """

    def __init__(
        self,
        *,
        max_line_size: int = MAX_LINE_SIZE,
        max_request_size: int = MAX_REQUEST_SIZE,
        max_request_lines: int = MAX_REQUEST_LINES,
    ) -> None:
        self._max_line_size = max_line_size
        self._max_request_size = max_request_size
        self._max_request_lines = max_request_lines
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for "\n" (no rescans per byte)
        self._state = _State.OP
        self._set: _SetBuilder | None = None
        self._results: deque[Request | UAPIError] = deque()

    @property
    def closed(self) -> bool:
        """True after EOF or a fatal error: no request beyond those queued will come."""
        return self._state is _State.CLOSED

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection. Never raises."""
        if self._state is _State.CLOSED or not data:
            return
        self._buf += data
        self._process()

    def feed_eof(self) -> None:
        """The client closed its side. A pending set request counts as complete (as in Go)."""
        if self._state is _State.SET:
            assert self._set is not None
            if self._buf:  # bufio.ScanLines returns a final line without "\n" at EOF
                self._set_line(bytes(self._buf))
            if self._state is _State.SET:
                self._end_set()
        self._close()

    def next_request(self) -> Request | None:
        """Pop the next complete request; raise UAPIError for a bad one; None if none is ready."""
        if not self._results:
            return None
        item = self._results.popleft()
        if isinstance(item, UAPIError):
            raise item
        return item

    def _close(self, error: UAPIError | None = None) -> None:
        if error is not None:
            self._results.append(error)
        self._state = _State.CLOSED
        self._set = None
        self._buf = bytearray()

    def _process(self) -> None:
        buf = self._buf
        pos = 0
        while pos < len(buf) and self._state is not _State.CLOSED:
            if self._state is _State.OP:
                head = bytes(buf[pos : pos + len(_GET_OP)])
                if _GET_OP.startswith(head) or _SET_OP.startswith(head):
                    if len(head) < len(_GET_OP):
                        break
                    pos += len(head)
                    if head == _GET_OP:
                        self._state = _State.GET
                    else:
                        self._state = _State.SET
                        self._set = _SetBuilder()
                else:
                    # wireguard-go hangs up on an unknown operation; we also say why first.
                    self._close(UAPIError(IPC_ERROR_PROTOCOL, "invalid UAPI operation", fatal=True))
                    return
            elif self._state is _State.GET:
                # wireguard-go reads exactly one more byte and wants "\n".
                if buf[pos] == 0x0A:
                    self._results.append(GetRequest())
                else:
                    self._results.append(_invalid("trailing character in UAPI get"))
                pos += 1
                self._state = _State.OP
            else:  # SET
                end = buf.find(b"\n", max(pos, self._scanned))
                if end < 0:
                    self._scanned = len(buf)
                    if len(buf) - pos >= self._max_line_size:
                        self._close(UAPIError(IPC_ERROR_IO, "line too long", fatal=True))
                        return
                    break
                line = bytes(buf[pos:end])
                pos = end + 1
                if len(line) + 1 > self._max_line_size:
                    self._close(UAPIError(IPC_ERROR_IO, "line too long", fatal=True))
                    return
                self._set_line(line)
        if self._state is not _State.CLOSED:
            del buf[:pos]
            self._scanned = max(0, self._scanned - pos)

    def _set_line(self, line: bytes) -> None:
        builder = self._set
        assert builder is not None
        builder.size += len(line) + 1
        builder.lines += 1
        if builder.size > self._max_request_size or builder.lines > self._max_request_lines:
            self._close(UAPIError(IPC_ERROR_IO, "set request too large", fatal=True))
            return
        if line.endswith(b"\r"):  # bufio.ScanLines drops one trailing CR
            line = line[:-1]
        if not line:
            self._end_set()
        elif builder.error is None:
            try:
                builder.line(line)
            except UAPIError as e:
                builder.error = e

    def _end_set(self) -> None:
        builder = self._set
        assert builder is not None
        self._results.append(builder.error if builder.error is not None else builder.finish())
        self._set = None
        self._state = _State.OP


def parse_requests(data: bytes) -> list[Request]:
    """Parse a whole byte string (then EOF) into requests; raise the first UAPIError."""
    parser = UAPIParser()
    parser.feed(data)
    parser.feed_eof()
    requests: list[Request] = []
    while (request := parser.next_request()) is not None:
        requests.append(request)
    return requests


# ---- formatting answers (server) and requests (client) ---------------------------------------


def format_errno(errno: int) -> bytes:
    """``errno=N\\n\\n``: the status that ends every answer (0 = success)."""
    return b"errno=%d\n\n" % errno


def format_get(snapshot: DeviceSnapshot) -> bytes:
    """The full answer to ``get=1``, in wireguard-go's key order, ending with ``errno=0``."""
    out: list[str] = []
    if snapshot.private_key is not None and snapshot.private_key != _ZERO_KEY:
        out.append(f"private_key={_key_hex(snapshot.private_key)}")
    if snapshot.listen_port:
        out.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        out.append(f"fwmark={snapshot.fwmark}")
    for peer in snapshot.peers:
        out.append(f"public_key={_key_hex(peer.public_key)}")
        out.append(f"preshared_key={_key_hex(peer.preshared_key or _ZERO_KEY)}")
        out.append("protocol_version=1")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(peer.endpoint)}")
        secs, nsecs = divmod(peer.last_handshake_time_ns, 1_000_000_000)
        out.append(f"last_handshake_time_sec={secs}")
        out.append(f"last_handshake_time_nsec={nsecs}")
        out.append(f"tx_bytes={peer.tx_bytes}")
        out.append(f"rx_bytes={peer.rx_bytes}")
        out.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        out.extend(f"allowed_ip={_prefix_text(net)}" for net in peer.allowed_ips)
    out.append("errno=0\n\n")
    return "\n".join(out).encode("ascii")


def _key_hex(key: bytes) -> str:
    if len(key) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    return key.hex()
