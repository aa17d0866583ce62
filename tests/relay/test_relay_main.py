"""meshscale-derp as a program: flags, TLS, the verify-client URL and the metrics listener."""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshscale.derp import frames as F
from meshscale.derp.errors import HandshakeError
from meshscale.derp.info import ClientInfo
from meshscale.derphttp import DERPClient
from meshscale.io.http import HTTPServer, Request, Response, Router
from meshscale.key import NodePrivate
from meshscale.relay.main import (
    build_parser,
    load_key,
    mesh_url,
    serve,
    split_addr,
    tls_context,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key(n: int) -> NodePrivate:
    return NodePrivate.generate(bytes([n]) * 32)


def self_signed(tmp: Path, name: str) -> ssl.SSLContext:
    k = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(k, hashes.SHA256())
    )
    (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(cafile=str(tmp / f"{name}.crt"))
    return ctx


def test_flag_parsing_like_derper() -> None:
    a = build_parser().parse_args(
        [
            "-a",
            ":8443",
            "-stun-port",
            "3479",
            "--verify-clients",
            "-hostname",
            "d.example",
            "--mesh-with",
            "a,b",
            "-stun=false",
        ]
    )
    assert (a.a, a.stun_port, a.verify_clients, a.hostname, a.mesh_with) == (
        ":8443",
        3479,
        True,
        "d.example",
        "a,b",
    )
    assert a.stun is False
    assert split_addr(":443", 1) == (None, 443)
    assert split_addr("[::1]:80", 1) == ("::1", 80)
    assert mesh_url("d1.example", True, 443) == ("https://d1.example/derp", "d1.example")
    assert mesh_url("d1.example/10.0.0.1", True, 8443) == (
        "https://10.0.0.1:8443/derp",
        "d1.example",
    )


def test_key_file_created_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "derper.json"
    k1 = load_key(str(path))
    assert json.loads(path.read_text())["PrivateKey"].startswith("privkey:")
    assert load_key(str(path)).public() == k1.public()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_standalone_tls_verify_url_and_metrics(tmp_path: Path) -> None:
    client_ctx = self_signed(tmp_path, "derp.test")
    derp_port, stun_port, debug_port = free_port(), free_port(), free_port()
    asked: list[Any] = []

    async def verify(req: Request) -> Response:
        body = json.loads(req.body)
        asked.append(body)
        allow = body["NodePublic"] == key(1).public().text()
        return Response.json_bytes(json.dumps({"Allow": allow}).encode())

    async def main() -> str:
        vr = Router()
        vr.add("POST", "/verify", verify)
        vsrv = HTTPServer(vr)
        vs = await vsrv.start("127.0.0.1", 0)
        vport = vs.sockets[0].getsockname()[1]
        args = build_parser().parse_args(
            [
                "-a",
                f"127.0.0.1:{derp_port}",
                "-hostname",
                "derp.test",
                "-certdir",
                str(tmp_path),
                "-stun-port",
                str(stun_port),
                "--verify-clients",
                "--verify-client-url",
                f"http://127.0.0.1:{vport}/verify",
                "--debug-addr",
                f"127.0.0.1:{debug_port}",
                "-c",
                str(tmp_path / "k.json"),
            ]
        )
        ready = asyncio.Event()
        task = asyncio.create_task(serve(args, ready))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            url = f"https://derp.test:{derp_port}/derp"
            a = DERPClient(key(1), url, ssl=client_ctx, host_addr="127.0.0.1")
            await a.connect()
            with pytest.raises((ConnectionError, HandshakeError)):
                await DERPClient(key(2), url, ssl=client_ctx, host_addr="127.0.0.1").connect()
            a.send(key(1).public(), b"to myself")
            async with asyncio.timeout(3):
                ev = await a.recv()
            assert ev == F.RecvPacket(key(1).public_raw(), b"to myself")
            await a.close()
            r, w = await asyncio.open_connection("127.0.0.1", debug_port)
            w.write(b"GET /debug/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = (await r.read()).decode()
            w.close()
            return text
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await vsrv.close()

    text = asyncio.run(main())
    assert 'derp_login_failures_total{reason="unknown_node"} 1' in text
    assert "derp_packets_relayed_total 1" in text
    assert [b["Source"] for b in asked] == ["127.0.0.1", "127.0.0.1"]


def test_meta_certificate_fields() -> None:
    from meshscale.relay.metacert import meta_certificate

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = x509.load_pem_x509_certificate(meta_certificate(key(5).public(), now))
    with warnings.catch_warnings():  # cryptography warns: the CN is longer than 64, as derper's
        warnings.simplefilter("ignore", UserWarning)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "derpkey" + key(5).public().hex()
    assert cert.serial_number == 2
    assert cert.not_valid_before_utc == now - datetime.timedelta(days=30)
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=30)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_chain_ends_with_meta_certificate(tmp_path: Path) -> None:
    self_signed(tmp_path, "derp.test")
    server_key = key(9).public()
    ctx = tls_context(str(tmp_path), "derp.test", server_key)

    async def main() -> str:
        srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
        port = srv.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-showcerts",
            "-tls1_3",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        srv.close()
        return out.decode()

    out = asyncio.run(main())
    assert "CN = derp.test" in out or "CN=derp.test" in out
    assert "derpkey" + server_key.hex() in out


def test_local_api_verifier_asks_whois_over_the_unix_socket(tmp_path: Path) -> None:
    from meshscale.relay.verify import LocalAPIVerifier

    asked: list[tuple[str, str | None, str | None]] = []
    known = key(1).public().text()

    async def whois(req: Request) -> Response:
        asked.append(
            (req.query.get("addr", ""), req.headers.get("host"), req.headers.get("sec-tailscale"))
        )
        if req.query.get("addr") == known:
            return Response.json_bytes(b'{"Node":{}}')
        return Response.text(404, "no match for IP:port\n")

    async def main() -> list[bool]:
        r = Router()
        r.add("GET", "/localapi/v0/whois", whois)
        srv = HTTPServer(r)
        path = str(tmp_path / "ts.sock")
        await srv.start_unix(path)
        v = LocalAPIVerifier(path)
        missing = LocalAPIVerifier(str(tmp_path / "absent.sock"))
        try:
            info = ClientInfo()
            return [
                await v(key(1).public(), info),
                await v(key(2).public(), info),
                await missing(key(1).public(), info),  # no tailscaled: refuse
            ]
        finally:
            await v.close()
            await missing.close()
            await srv.close(grace=0.5)

    assert asyncio.run(main()) == [True, False, False]
    assert asked[0] == (known, "local-tailscaled.sock", "localapi")


def test_derp_region_json() -> None:
    from meshscale.relay.app import derp_node, derp_region

    r = derp_region(
        900,
        "lab",
        "Lab",
        "d1.lab",
        8443,
        3479,
        ipv4="10.0.0.1",
        extra_nodes=[derp_node(900, "900b", "d2.lab", can_port80=True)],
    )
    assert r == {
        "RegionID": 900,
        "RegionCode": "lab",
        "RegionName": "Lab",
        "Nodes": [
            {
                "Name": "900",
                "RegionID": 900,
                "HostName": "d1.lab",
                "IPv4": "10.0.0.1",
                "STUNPort": 3479,
                "DERPPort": 8443,
            },
            {"Name": "900b", "RegionID": 900, "HostName": "d2.lab", "CanPort80": True},
        ],
    }


def test_bootstrap_dns_answers_published_and_asked_names() -> None:
    from meshscale.relay.bootstrap_dns import BootstrapDNS

    def req(q: str | None) -> Request:
        from meshscale.io.http import Headers

        query = {} if q is None else {"q": q}
        return Request("GET", "/bootstrap-dns", "", query, Headers([]))

    async def main() -> list[dict[str, list[str]]]:
        b = BootstrapDNS(["localhost"], ["localhost6", ""])
        out = []
        for q in (None, "localhost6", "example.invalid"):
            resp = await b.handle(req(q))
            assert isinstance(resp.body, bytes)
            out.append(json.loads(resp.body))
        return out

    published, unpublished, unknown = asyncio.run(main())
    assert list(published) == ["localhost"]
    assert "127.0.0.1" in published["localhost"]
    assert list(unpublished) == ["localhost6"]
    assert unknown == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-a", "127.0.0.1:0"], "TLS needs -certdir"),
        (["-dev", "-a", "127.0.0.1:0", "-stun=false", "--mesh-with", "x"], "needs --mesh-psk-file"),
    ],
)
def test_main_refuses_incomplete_configuration(argv: list[str], message: str) -> None:
    from meshscale.relay.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert message in str(exc.value.code)


def test_main_reports_a_busy_port() -> None:
    from meshscale.relay.main import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["-dev", "-a", f"127.0.0.1:{port}", "-stun=false"]) == 1
