"""The lab CA: certificates that OpenSSL (and so Python's ssl) verifies for names and IPs."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from cryptography import x509

from meshscale.lab.pki import LabCA


def test_issue_has_names_and_ips(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    cert_path, key_path = ca.issue(["ctl.lab", "derp.lab"], [IPv4Address("203.0.113.10")])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ctl.lab", "derp.lab"]
    assert san.get_values_for_type(x509.IPAddress) == [IPv4Address("203.0.113.10")]
    assert cert.issuer == ca.certificate.subject
    assert key_path.stat().st_mode & 0o077 == 0
    cert.verify_directly_issued_by(ca.certificate)


def test_reopen_keeps_the_ca(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    again = LabCA(tmp_path)
    assert again.certificate == ca.certificate
    cert_path, _ = again.issue([], [IPv6Address("2001:db8:1::a")])
    assert cert_path.name == "2001_db8_1__a.pem"
    x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(ca.certificate)


def test_issue_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LabCA(tmp_path).issue([], [])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_for_the_name(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    cert_path, _ = ca.issue(["ctl.lab"], [IPv4Address("127.0.0.1")])
    for flag in (["-verify_hostname", "ctl.lab"], ["-verify_ip", "127.0.0.1"]):
        res = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca.cert_path), "-purpose", "sslserver",
             *flag, str(cert_path)],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.cert_path), "-verify_hostname", "other.lab",
         str(cert_path)],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    assert res.returncode != 0


def test_tls_handshake_over_loopback(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    cert_path, key_path = ca.issue(["ctl.lab"], [IPv4Address("127.0.0.1")])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                got.append(tls.recv(16))

        t = threading.Thread(target=serve)
        t.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="ctl.lab") as tls,
        ):
            tls.sendall(b"hello")
        t.join(10)
    assert got == [b"hello"]
