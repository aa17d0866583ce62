"""dns.extra_records_path (Headscale's watched JSON file) and the SIGHUP reload of dns:."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshscale.control.app import AppSettings
from meshscale.control.config import ConfigError, ExtraRecord, load_config, parse_extra_records

BASE = "server_url: https://ctl.example.test\nlisten_addr: 127.0.0.1:0\nunix_socket: s/ctl.sock\n"


def test_parse_extra_records() -> None:
    text = '[{"Name": "a.x", "Type": "A", "Value": "100.64.0.9"}, {"Name": "a.x", "Type": "A", ' \
           '"Value": "100.64.0.9"}, {"Name": "b.x", "Value": "fd7a::1"}]'  # fmt: skip
    with pytest.raises(ConfigError, match=r"AAAA|A record"):
        parse_extra_records(text)
    ok = '[{"Name": "a.x", "Type": "A", "Value": "100.64.0.9"}, {"Name": "a.x", "Type": "A", ' \
         '"Value": "100.64.0.9"}, {"Name": "b.x", "Type": "AAAA", "Value": "fd7a::1"}]'  # fmt: skip
    assert parse_extra_records(ok) == (ExtraRecord("a.x", "A", "100.64.0.9"),
                                       ExtraRecord("b.x", "AAAA", "fd7a::1"))  # fmt: skip
    assert parse_extra_records("  \n") is None  # empty file: ignored
    assert parse_extra_records("[]") == ()  # [] clears
    for bad in ("{", '{"Name": "a"}', '[{"Name": "a.x", "Value": "nope"}]', "[1]"):
        with pytest.raises(ConfigError):
            parse_extra_records(bad)


def test_extra_records_and_path_are_exclusive(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    dns = (
        "dns:\n  base_domain: tn.example\n  nameservers: {global: [1.1.1.1]}\n"
        "  extra_records: [{name: a.tn.example, type: A, value: 100.64.0.9}]\n"
        f"  extra_records_path: {tmp_path / 'r.json'}\n"
    )
    cfg_path.write_text(BASE + dns)
    with pytest.raises(ConfigError, match="mutually exclusive"):
        load_config(cfg_path, state_dir=tmp_path)


def test_records_outside_base_domain_get_their_own_local_route() -> None:
    s = AppSettings(server_url="https://c.test", base_domain="tn.example",
                    extra_records=(("grafana.tn.example", "A", "100.64.0.3"),
                                   ("wiki.corp.example", "A", "100.64.0.4")))  # fmt: skip
    routes = s.dns_config().Routes
    assert routes["wiki.corp.example"] == [] and "grafana.tn.example" not in routes
    assert "corp.example" not in routes  # the siblings still go upstream


def test_watched_file_and_sighup_reload_push_new_dns(tmp_path: Path) -> None:
    from meshscale.control.server import Server

    records = tmp_path / "records.json"
    records.write_text('[{"Name": "a.tn.example", "Type": "A", "Value": "100.64.0.9"}]')
    cfg_path = tmp_path / "c.yaml"

    def write_cfg(search: str) -> None:
        dns = (
            "dns:\n  base_domain: tn.example\n  nameservers: {global: [1.1.1.1]}\n"
            f"  search_domains: [{search}]\n  extra_records_path: {records}\n"
        )
        cfg_path.write_text(BASE + "derp:\n  server: {enabled: false}\n  urls: []\n" + dns)

    write_cfg("one.example")
    cfg = load_config(cfg_path, state_dir=tmp_path / "state")

    async def main() -> None:
        server = Server(cfg)
        await server.start()
        try:
            app = server.app
            assert app is not None and server.state is not None
            assert [r.Value for r in app.current_dns().ExtraRecords] == ["100.64.0.9"]
            sub = server.state.subscribe()
            records.write_text('[{"Name": "b.tn.example", "Type": "A", "Value": "100.64.0.8"}]')
            for _ in range(50):
                await asyncio.sleep(0.1)
                if app.current_dns().ExtraRecords[0].Name == "b.tn.example":
                    break
            assert app.current_dns().ExtraRecords[0].Name == "b.tn.example"
            records.write_text("")  # empty: ignored, old records kept
            await asyncio.sleep(1.5)
            assert app.current_dns().ExtraRecords[0].Name == "b.tn.example"
            records.write_text("[]")  # cleared
            for _ in range(50):
                await asyncio.sleep(0.1)
                if not app.current_dns().ExtraRecords:
                    break
            assert not app.current_dns().ExtraRecords
            write_cfg("two.example")
            server.reload_dns()
            assert app.current_dns().Domains == ["tn.example", "two.example"]
            sub.drain()
        finally:
            await server.close()

    asyncio.run(main())
