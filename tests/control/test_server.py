"""Server (server.py) in-process: its listeners, routes, DERP map sources and policy reload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path

import pytest

from meshscale.control.cli import AdminClient, AdminError

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_in_process_wiring(tmp_path: Path) -> None:
    """serve's wiring without a subprocess: unix socket (trusted), TCP (API key), /health,
    /metrics, /key, the embedded DERP probe, the DERP map, and policy reload."""
    from meshscale.control.config import ConfigError, load_config
    from meshscale.control.server import Server

    policy = tmp_path / "policy.hujson"
    policy.write_text('{"acls": []}')
    # A DERP map file in Headscale's derp.paths form (lower-case keys, as Go accepts).
    (tmp_path / "derp.yaml").write_text(
        "regions:\n  902:\n    regionid: 902\n    regioncode: file\n    nodes:\n"
        "      - name: 902a\n        regionid: 902\n        hostname: derp2.example.test\n"
    )
    remote_map = {
        "Regions": {
            "903": {
                "RegionID": 903,
                "RegionCode": "url",
                "Nodes": [{"Name": "903a", "RegionID": 903, "HostName": "derp3.example.test"}],
            }
        }
    }
    derp_port = free_port()
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "server_url: https://ctl.example.test\nlisten_addr: 127.0.0.1:0\n"
        "metrics_listen_addr: 127.0.0.1:0\nunix_socket: s/ctl.sock\n"
        f"policy:\n  mode: file\n  path: {policy}\n"
        "derp:\n  server:\n    region_id: 901\n    stun_listen_addr: 127.0.0.1:0\n"
        f"  urls: [http://127.0.0.1:{derp_port}/derpmap/default,"
        f" http://127.0.0.1:{derp_port}/missing]\n"
        f"  paths: [{tmp_path / 'derp.yaml'}]\n"
    )
    cfg = load_config(cfg_path, state_dir=tmp_path / "state")

    async def fetch(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        return data

    async def main() -> str:
        from meshscale.io.http import HTTPServer, Response, Router

        async def derpmap(req: object) -> Response:
            return Response.json_bytes(json.dumps(remote_map).encode())

        r = Router()
        r.add("GET", "/derpmap/default", derpmap)
        map_server = HTTPServer(r)
        await map_server.start("127.0.0.1", derp_port)
        server = Server(cfg)
        try:
            await server.start()
        finally:
            await map_server.close()
        loop = asyncio.get_running_loop()
        try:
            port = server.bound["listen"][1]
            local = AdminClient(unix_socket=server.bound["unix"])
            got = await loop.run_in_executor(None, local.request, "GET", "/api/v1/policy")
            assert got["policy"] == '{"acls": []}' and got["version"] == 1
            remote = AdminClient(url=f"http://127.0.0.1:{port}", api_key="hskey-api-nope")
            with pytest.raises(AdminError, match="invalid API key"):
                await loop.run_in_executor(None, remote.request, "GET", "/api/v1/user")
            assert (await fetch(port, "/health")).startswith(b"HTTP/1.1 200")
            assert b'"publicKey":"mkey:' in await fetch(port, "/key?v=130")
            assert (await fetch(port, "/derp/probe")).startswith(b"HTTP/1.1 200")
            metrics = await fetch(server.bound["metrics"][1], "/metrics")
            assert b"meshscale_control_nodes 0" in metrics
            # Prometheus text with HELP and TYPE for every family (control and embedded DERP).
            from prometheus_client.parser import text_string_to_metric_families

            text = metrics.decode().split("\r\n\r\n", 1)[-1]
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            assert fams["meshscale_control_nodes"].documentation == "Registered nodes."
            assert fams["meshscale_control_full_maps"].type == "counter"
            assert text.count("# HELP ") == text.count("# TYPE ") >= 6
            assert sorted(server.app.derp_map.Regions) == [901, 902, 903]
            assert server.app.derp_map.Regions[902].Nodes[0].HostName == "derp2.example.test"
            region = server.app.derp_map.Regions[901]
            assert region.Nodes[0].HostName == "ctl.example.test"
            assert region.Nodes[0].STUNPort == server.bound["stun"][1]
            new = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}'
            policy.write_text(new)
            assert server.state is not None
            assert server.reload_policy() or server.state.policy == new  # (or the watcher)
            assert not server.reload_policy()  # unchanged
            assert server.state.policy == new
            policy.write_text('{"acls": [{"action": "accept"}]}')  # refused: old one stays
            with pytest.raises(ConfigError, match=r'no "src" at 1:11'):
                server.reload_policy()
            assert server.state.policy == new
        finally:
            await server.close()
        return str(server.bound["unix"])

    assert not Path(asyncio.run(main())).exists()


def test_server_serves_tls(tmp_path: Path) -> None:
    import ssl

    from meshscale.control.config import load_config
    from meshscale.control.server import Server
    from meshscale.lab.pki import LabCA

    ca = LabCA(tmp_path / "pki")
    cert, key = ca.issue(["ctl.test"])
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "server_url: https://ctl.test\nlisten_addr: 127.0.0.1:0\nunix_socket: ctl.sock\n"
        f"tls_cert_path: {cert}\ntls_key_path: {key}\n"
        "derp:\n  server:\n    enabled: false\n"
    )
    cfg = load_config(cfg_path, state_dir=tmp_path / "state")
    assert cfg.tls_enabled

    async def main() -> bytes:
        server = Server(cfg)
        await server.start()
        try:
            ctx = ssl.create_default_context(cafile=str(ca.cert_path))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.bound["listen"][1], ssl=ctx, server_hostname="ctl.test"
            )
            writer.write(b"GET /health HTTP/1.1\r\nHost: ctl.test\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
            return data
        finally:
            await server.close()

    reply = asyncio.run(main())
    assert reply.startswith(b"HTTP/1.1 200") and b'"status":"pass"' in reply
