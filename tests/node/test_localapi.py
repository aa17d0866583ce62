from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from meshscale.node.localapi import LocalAPI
from meshscale.testing.fakebackend import FakeBackend, ThreadedLocalAPI


async def _request(path, method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    data = body or b""
    writer.write(
        f"{method} {url} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + data
    )
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        payload = _dechunk(payload)
    return status, json.loads(payload) if payload else {}


def _dechunk(b: bytes) -> bytes:
    out = b""
    while b:
        size, _, rest = b.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2 :]
    return out


@pytest.fixture
def api_path(tmp_path):
    return tmp_path / "ms.sock"


async def _serve(api_path, backend):
    api = LocalAPI(backend)
    await api.start(api_path)
    return api


def test_status_json_shape(api_path):
    asyncio.run(_status_json_shape(api_path))


async def _status_json_shape(api_path):
    be = FakeBackend()
    be.state = "Running"
    api = await _serve(api_path, be)
    try:
        status, st = await _request(api_path, "GET", "/localapi/v0/status")
    finally:
        await api.close()
    assert status == 200
    assert st["BackendState"] == "Running"
    assert st["Self"]["HostName"] == "me"
    peer = st["Peer"]["nodekey:" + "22" * 32]
    for key in ("HostName", "DNSName", "TailscaleIPs", "CurAddr", "Relay", "Online", "RxBytes",
                "TxBytes", "LastHandshake", "PublicKey", "Active"):  # fmt: skip
        assert key in peer
    assert peer["LastHandshake"] == "2026-01-02T03:04:05Z"
    assert st["Peer"]["nodekey:" + "33" * 32]["LastHandshake"] == "0001-01-01T00:00:00Z"
    assert st["User"]["1"]["LoginName"] == "alice@example.com"


def test_start_as_root_and_malformed_bodies(api_path):
    asyncio.run(_start_and_malformed(api_path))


async def _start_and_malformed(api_path):
    be = FakeBackend()
    api = await _serve(api_path, be)
    try:
        ok = await _request(api_path, "POST", "/localapi/v0/start",
                            json.dumps({"Prefs": {"ControlURL": "http://c"}}).encode())  # fmt: skip
        bad_json = await _request(api_path, "POST", "/localapi/v0/start", b"{nope")
        not_obj = await _request(api_path, "POST", "/localapi/v0/start", b"[1]")
        bad_pref = await _request(api_path, "POST", "/localapi/v0/start",
                                  b'{"Prefs": {"WantRunning": 3}}')  # fmt: skip
        bad_ip = await _request(api_path, "POST", "/localapi/v0/ping?ip=300.1.1.1")
        bad_to = await _request(api_path, "POST", "/localapi/v0/ping?ip=1.2.3.4&timeout=99")
        unknown = await _request(api_path, "GET", "/localapi/v0/whois?addr=100.64.0.9")
        no_route = await _request(api_path, "GET", "/localapi/v0/nothing")
    finally:
        await api.close()
    assert ok == (200, {"BackendState": "Running"})
    for status, body in (bad_json, not_obj, bad_pref, bad_ip, bad_to):
        assert status == 400, body
        assert "\n" not in body["error"] and body["error"]
    assert unknown[0] == 404
    assert no_route[0] == 404
    assert [c[0] for c in be.calls] == ["start"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_non_root_cannot_change_state_but_can_read(tmp_path):
    """A real other-uid client: SO_PEERCRED, not the request, decides."""
    sockdir = Path(tempfile.mkdtemp(prefix="ms-localapi-", dir="/tmp"))
    os.chmod(sockdir, 0o755)
    path = sockdir / "ms.sock"
    be = FakeBackend()
    script = (
        "import socket,sys\n"
        "def req(m,u):\n"
        "  s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "  s.sendall((m+' '+u+' HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n"
        "Connection: close\\r\\n\\r\\n').encode()); b=b''\n"
        "  while (c:=s.recv(4096)): b+=c\n"
        "  return b.split()[1].decode()\n"
        "print(req('GET','/localapi/v0/status'), req('POST','/localapi/v0/down'))\n"
    )
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sockdir, True)
        stack.enter_context(ThreadedLocalAPI(be, path))
        proc = subprocess.run(
            ["/usr/bin/python3", "-c", script, str(path)], capture_output=True, user=65534,
            timeout=20,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.split() == [b"200", b"403"]
    assert be.calls == []


def test_garbage_and_oversized_requests_are_refused(api_path):
    async def body():
        api = await _serve(api_path, FakeBackend())
        try:
            reader, writer = await asyncio.open_unix_connection(str(api_path))
            writer.write(b"\x00\x01garbage\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert raw.startswith(b"HTTP/1.") and b" 400 " in raw.split(b"\r\n", 1)[0]
            big = json.dumps({"Prefs": {}, "AuthKey": "k" * 100_000}).encode()
            status, _ = await _request(api_path, "POST", "/localapi/v0/start", big)
            assert status == 413
            status, _ = await _request(api_path, "GET", "/localapi/v0/status")
            assert status == 200  # still serving
        finally:
            await api.close()

    asyncio.run(body())


def test_metrics_prometheus_text_with_help_and_type(api_path):
    from prometheus_client.parser import text_string_to_metric_families

    from meshscale.node.localapi import node_metrics

    async def body() -> bytes:
        be = FakeBackend()
        be.state = "Running"
        api = await _serve(api_path, be)
        try:
            reader, writer = await asyncio.open_unix_connection(str(api_path))
            writer.write(
                b"GET /localapi/v0/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            raw = await reader.read()
            writer.close()
        finally:
            await api.close()
        return raw

    raw = asyncio.run(body())
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"text/plain" in head
    if b"chunked" in head.lower():
        payload = _dechunk(payload)
    text = payload.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["meshscaled_running"].samples[0].value == 1.0
    assert {s.labels["path"] for s in fams["meshscaled_peers"].samples} == {"direct", "relay"}
    assert fams["meshscaled_peer_rx_bytes"].type == "counter"
    assert text.count("# HELP ") == text.count("# TYPE ") == len(fams)
    # The daemon's debug counters become labelled counter families.
    be = FakeBackend()
    got = node_metrics(be.status(), {"magicsock": {"disco_pings_sent": 3}, "device_drops": {}})
    ms = next(f for f in got if f.name == "meshscaled_magicsock_events_total")
    assert ms.samples == [({"name": "disco_pings_sent"}, 3.0)]
    assert not any(f.name == "meshscaled_device_drops_total" for f in got)  # empty: left out
