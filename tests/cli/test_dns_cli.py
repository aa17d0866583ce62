"""`meshscale dns status|query` against a real local API whose backend carries MagicDNS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meshscale.node.magicdns.manager import MagicDNS
from meshscale.tailcfg.dns import DNSConfig, DNSRecord
from meshscale.tailcfg.dns import Resolver as Up
from meshscale.tailcfg.node import Node

from .localapi import run


def test_dns_status_and_query(daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    be, sock = daemon
    code, _, err = run(capsys, sock, "dns", "status")
    assert code == 1 and "MagicDNS is not running" in err
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    loop = asyncio.new_event_loop()
    try:
        m = MagicDNS(tmp_path, "ms0", loop, inject=lambda p: None, resolv_conf=resolv)
        extra = DNSRecord(Name="x.lab.example", Type="A", Value="100.64.0.9")
        cfg = DNSConfig(
            Proxied=True,
            Domains=["lab.example"],
            Routes={"corp.test": [Up(Addr="10.0.0.53")]},
            ExtraRecords=[extra],
        )
        me = Node(Name="n1.lab.example.", Addresses=["100.64.0.1/32"])
        web = Node(Name="web.lab.example.", Addresses=["100.64.0.2/32"])
        m.set_netmap(cfg, me, [web], accept_dns=True)
        be.magicdns = m
        code, out, _ = run(capsys, sock, "dns", "status")
        assert code == 0 and "Tailscale DNS: enabled." in out
        assert "corp.test -> 10.0.0.53" in out and "x.lab.example A 100.64.0.9" in out
        assert "direct mode" in out and "(in use)" in out
        code, out, _ = run(capsys, sock, "dns", "status", "--json")
        assert json.loads(out)["SearchDomains"] == ["lab.example"]
        code, out, _ = run(capsys, sock, "dns", "query", "web")
        assert code == 0 and "100.64.0.2" in out and "NOERROR" in out
        code, out, _ = run(capsys, sock, "dns", "query", "--json", "2.0.64.100.in-addr.arpa", "PTR")
        assert json.loads(out)["Answers"][0]["Value"] == "web.lab.example."
        code, out, _ = run(capsys, sock, "dns", "query", "nope.lab.example")
        assert code == 0 and "NXDOMAIN" in out
        code, _, err = run(capsys, sock, "dns", "query", "web", "BOGUS")
        assert code == 1 and "dns-query" in err
        m.clear()
        assert resolv.read_text() == "nameserver 192.0.2.53\n"
    finally:
        loop.close()
