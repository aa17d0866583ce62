"""The UAPI core against the reference: Debian's wireguard-go 0.0.20220316 in a lab namespace.

- golden: our client request configures wireguard-go; its raw ``get`` answer parses to what we
  set, and ``format_get`` reproduces it byte for byte (same key order and value text);
- differential: each malformed line gets the same errno from wireguard-go as from our parser.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshscale.lab import Lab, cleanup_stale
from meshscale.lab.wgpair import UAPI_DIR, WGEnd, have_wireguard_go, start_end
from meshscale.wgdev.uapi_server import configure_device
from meshscale.wireguard.uapi import (
    PeerChange,
    SetRequest,
    UAPIError,
    UAPIParser,
    format_get,
)
from meshscale.wireguard.uapi_client import parse_get_response

pytestmark = [
    pytest.mark.lab,
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg (apt)"),
]

PEER = bytes([0x5A] * 32)
PSK = bytes([0x33] * 32)
TIMEOUT = 5.0  # seconds


@pytest.fixture(scope="module")
def wggo() -> Iterator[WGEnd]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("lab tests need root and the ip command")
    cleanup_stale()
    workdir = Path(tempfile.mkdtemp(prefix="msuapi-interop"))
    try:
        with Lab(hint="wgu", workdir=workdir / "lab") as lab:
            end = start_end(lab.add_public_host("a"), "wireguard-go", 1, log_dir=workdir)
            try:
                yield end
            finally:
                end.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sock_path(end: WGEnd) -> str:
    return str(UAPI_DIR / f"{end.ifname}.sock")


def raw_exchange(end: WGEnd, data: bytes) -> bytes:
    """Send data on a fresh connection; return the first answer (up to its empty line)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(sock_path(end))
        s.sendall(data)
        answer = b""
        while b"\n\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer[: answer.find(b"\n\n") + 2] if b"\n\n" in answer else answer


def test_golden_get_answer_of_wireguard_go(wggo: WGEnd) -> None:
    path = sock_path(wggo)
    configure_device(
        path,
        SetRequest(
            fwmark=0x51,
            replace_peers=True,
            peers=[
                PeerChange(
                    public_key=PEER,
                    preshared_key=PSK,
                    endpoint=("2001:db8::77", 51820),
                    allowed_ips_add=[
                        ipaddress.ip_network("10.55.0.0/16"),
                        ipaddress.ip_network("fd55::/64"),
                        ipaddress.ip_network("::ffff:10.0.0.0/104"),
                    ],
                )
            ],
        ),
    )
    raw = raw_exchange(wggo, b"get=1\n\n")
    snapshot = parse_get_response(raw)
    assert snapshot.listen_port == wggo.port
    assert snapshot.fwmark == 0x51
    (peer,) = snapshot.peers
    assert (peer.public_key, peer.preshared_key, peer.endpoint) == (
        PEER,
        PSK,
        ("2001:db8::77", 51820),
    )
    assert sorted(map(str, peer.allowed_ips)) == sorted(
        ["10.55.0.0/16", "fd55::/64", "::ffff:a00:0/104"]
    )
    assert format_get(snapshot) == raw  # byte for byte: order and text of every line


def our_errno(data: bytes) -> int:
    parser = UAPIParser()
    parser.feed(data)
    try:
        request = parser.next_request()
    except UAPIError as e:
        return e.errno
    assert request is not None
    return 0


HEX = PEER.hex()
DEVICE_LINES = [
    "nonsense",
    "listen_port=65536",
    "listen_port=-1",
    "listen_port=+1",
    "listen_port=",
    "fwmark=4294967296",
    "fwmark=0x10",
    "replace_peers=false",
    "private_key=" + HEX[:-2],
    "private_key=" + "G" * 64,
    "preshared_key=" + HEX,
    "whatever=1",
    "public_key=" + HEX[:10],
]
PEER_LINES = [
    "update_only=yes",
    "remove=1",
    "preshared_key=" + HEX + "00",
    "persistent_keepalive_interval=65536",
    "replace_allowed_ips=1",
    "protocol_version=2",
    "protocol_version=1",
    "private_key=" + HEX,
    "endpoint=1.2.3.4",
    "endpoint=1.2.3.4:65536",
    "endpoint=[1.2.3.4]:5",
    "endpoint=::1:5",
    "endpoint=[::1:5",
    "endpoint=01.2.3.4:5",
    "endpoint=[fe80::1%eth0]:5",
    "endpoint=192.0.2.1:007",
    "allowed_ip=10.0.0.0",
    "allowed_ip=10.0.0.0/33",
    "allowed_ip=10.0.0.0/-1",
    "allowed_ip=::/129",
    "allowed_ip=fe80::%eth0/64",
    "allowed_ip=10.0.0.1/8",
    "allowed_ip=-10.0.0.0/8",
    "allowed_ip=0.0.0.0/0",
    "persistent_keepalive_interval=0025",
    "private_key=" + HEX.upper(),
]


@pytest.mark.parametrize("line", DEVICE_LINES)
def test_same_errno_as_wireguard_go_device_lines(wggo: WGEnd, line: str) -> None:
    data = f"set=1\n{line}\n\n".encode()
    theirs = raw_exchange(wggo, data)
    assert theirs == b"errno=%d\n\n" % our_errno(data)


# Where the 2022 reference and current upstream (f333402, which we follow) differ.
NEWER_THAN_REFERENCE = {
    "allowed_ip=-10.0.0.0/8": "allowed_ip=-P (remove one prefix) came after 0.0.20220316",
}


@pytest.mark.parametrize("line", PEER_LINES)
def test_same_errno_as_wireguard_go_peer_lines(wggo: WGEnd, line: str) -> None:
    # update_only keeps wireguard-go from creating the peer; later lines are still parsed.
    data = f"set=1\npublic_key={'77' * 32}\nupdate_only=true\n{line}\n\n".encode()
    theirs = raw_exchange(wggo, data)
    if line in NEWER_THAN_REFERENCE:
        assert (theirs, our_errno(data)) == (b"errno=-22\n\n", 0)
    else:
        assert theirs == b"errno=%d\n\n" % our_errno(data)


def test_get_with_trailing_character(wggo: WGEnd) -> None:
    assert (
        raw_exchange(wggo, b"get=1\nx")
        == b"errno=-22\n\n"
        == b"errno=%d\n\n" % our_errno(b"get=1\nx")
    )
