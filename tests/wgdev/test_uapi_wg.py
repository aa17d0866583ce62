"""The real wg(8) (wireguard-tools) driving our UAPI server over /var/run/wireguard/<unique>.sock.

The server's backend is the in-memory FakeBackend, so these tests check exactly the UAPI: what
wg sends (recorded SetRequests), and that wg understands our answers (dump, showconf, syncconf).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from meshscale.key import clamp
from meshscale.wireguard.uapi import UNSET, PeerChange, SetRequest

from .conftest import RunningServer
from .fakes import FakeBackend, FakePeer, net, public_key

pytestmark = pytest.mark.interop

PRIV = clamp(bytes(range(1, 33)))  # as wg genkey makes them
PEER1, PEER2, PEER3 = bytes([0x11] * 32), bytes([0x22] * 32), bytes([0x33] * 32)
PSK = bytes([0x44] * 32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["wg", *args], capture_output=True, text=True, timeout=10, check=check)


def secret_file(tmp_path: Path, name: str, key: bytes) -> str:
    path = tmp_path / name
    path.write_text(b64(key) + "\n")
    path.chmod(0o600)
    return str(path)


def test_wg_show_dump(wg_server: tuple[str, RunningServer], backend: FakeBackend) -> None:
    ifname, _ = wg_server
    backend.private_key = PRIV
    backend.listen_port = 51820
    backend.fwmark = 0x2A
    backend.peers[PEER1] = FakePeer(
        preshared_key=PSK,
        endpoint=("192.0.2.7", 4500),
        persistent_keepalive_interval=25,
        allowed_ips=[net("10.0.0.2/32"), net("fd00::/64")],
        last_handshake_time_ns=1_700_000_000_999_000_000,
        tx_bytes=123,
        rx_bytes=456,
    )
    backend.peers[PEER2] = FakePeer(endpoint=("fe80::1%lo", 7))
    out = wg("show", ifname, "dump").stdout
    assert out.splitlines() == [
        f"{b64(PRIV)}\t{b64(public_key(PRIV))}\t51820\t0x2a",
        f"{b64(PEER1)}\t{b64(PSK)}\t192.0.2.7:4500\t10.0.0.2/32,fd00::/64\t1700000000\t456\t123\t25",
        f"{b64(PEER2)}\t(none)\t[fe80::1%lo]:7\t(none)\t0\t0\t0\toff",
    ]
    assert wg("show", ifname, "listen-port").stdout == "51820\n"
    assert ifname in wg("show", "interfaces").stdout.split()


def test_wg_set_sends_what_we_expect(
    wg_server: tuple[str, RunningServer], backend: FakeBackend, tmp_path: Path
) -> None:
    ifname, _ = wg_server
    wg(
        "set", ifname,
        "private-key", secret_file(tmp_path, "priv", PRIV),
        "listen-port", "51999",
        "fwmark", "0x10",
        "peer", b64(PEER1),
        "preshared-key", secret_file(tmp_path, "psk", PSK),
        "endpoint", "[2001:db8::5]:51820",
        "persistent-keepalive", "15",
        "allowed-ips", "10.1.0.0/16,fd01::1/128",
    )  # fmt: skip
    assert backend.sets == [
        SetRequest(
            private_key=PRIV,
            listen_port=51999,
            fwmark=16,
            peers=[
                PeerChange(
                    public_key=PEER1,
                    preshared_key=PSK,
                    endpoint=("2001:db8::5", 51820),
                    persistent_keepalive_interval=15,
                    replace_allowed_ips=True,
                    allowed_ips_add=[net("10.1.0.0/16"), net("fd01::1/128")],
                )
            ],
        )
    ]
    assert backend.peers[PEER1].allowed_ips == [net("10.1.0.0/16"), net("fd01::1/128")]
    wg("set", ifname, "peer", b64(PEER1), "remove")
    assert backend.sets[-1] == SetRequest(peers=[PeerChange(PEER1, remove=True)])
    assert backend.peers == {}


def test_wg_set_reports_our_errno(wg_server: tuple[str, RunningServer]) -> None:
    ifname, _ = wg_server
    result = wg("set", ifname, "listen-port", "1", check=False)  # the fake says port 1 is taken
    assert result.returncode == 1
    assert "Address already in use" in result.stderr


def test_wg_showconf(wg_server: tuple[str, RunningServer], backend: FakeBackend) -> None:
    ifname, _ = wg_server
    backend.private_key = PRIV
    backend.listen_port = 4242
    backend.peers[PEER1] = FakePeer(
        endpoint=("198.51.100.1", 1),
        allowed_ips=[net("10.9.0.0/24")],
        persistent_keepalive_interval=5,
    )
    assert wg("showconf", ifname).stdout == (
        "[Interface]\n"
        "ListenPort = 4242\n"
        f"PrivateKey = {b64(PRIV)}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {b64(PEER1)}\n"
        "AllowedIPs = 10.9.0.0/24\n"
        "Endpoint = 198.51.100.1:1\n"
        "PersistentKeepalive = 5\n"
    )


def test_wg_syncconf(
    wg_server: tuple[str, RunningServer], backend: FakeBackend, tmp_path: Path
) -> None:
    ifname, _ = wg_server
    backend.private_key = PRIV
    backend.listen_port = 1000
    backend.peers[PEER1] = FakePeer(allowed_ips=[net("10.0.0.1/32")])
    backend.peers[PEER2] = FakePeer(allowed_ips=[net("10.0.0.2/32")])
    conf = tmp_path / "wg.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {b64(PRIV)}\nListenPort = 1000\n\n"
        f"[Peer]\nPublicKey = {b64(PEER2)}\nAllowedIPs = 10.0.0.22/32\n\n"
        f"[Peer]\nPublicKey = {b64(PEER3)}\nAllowedIPs = 10.0.0.3/32\nEndpoint = 192.0.2.3:3\n"
    )
    wg("syncconf", ifname, str(conf))
    assert list(backend.peers) == [PEER2, PEER3]
    assert backend.peers[PEER2].allowed_ips == [net("10.0.0.22/32")]
    assert backend.peers[PEER3].endpoint == ("192.0.2.3", 3)
    assert backend.private_key == PRIV
    # syncconf leaves untouched what did not change and removes PEER1 explicitly.
    last = backend.sets[-1]
    assert last.private_key is UNSET or last.private_key == PRIV
    assert PeerChange(PEER1, remove=True) in last.peers
