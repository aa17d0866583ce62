from __future__ import annotations

import json

import pytest
from tests.cli.localapi import run


def test_up_with_key_then_status_table(daemon, capsys):
    be, sock = daemon
    code, out, err = run(capsys, sock, "up", "--login-server=http://ctl:8080", "--authkey", "k",
                         "--hostname", "me", "--timeout=5s")  # fmt: skip
    assert code == 0, err
    prefs, key, reset = be.calls[0][1]
    assert (prefs.ControlURL, prefs.Hostname, prefs.WantRunning, key, reset) == (
        "http://ctl:8080", "me", True, "k", False)  # fmt: skip
    code, out, err = run(capsys, sock, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["100.64.0.1", "me", "alice@", "linux", "-"]
    assert "alpha" in lines[1] and "active; direct 203.0.113.10:41641, tx 2000 rx 1000" in lines[1]
    assert 'active; relay "lab", tx 20 rx 10' in lines[2]
    assert lines[3].split()[-1] == "offline"


def test_status_json_passthrough(daemon, capsys):
    be, sock = daemon
    be.state = "Running"
    code, out, _ = run(capsys, sock, "status", "--json")
    st = json.loads(out)
    assert code == 0 and st["BackendState"] == "Running"
    assert set(st["Peer"]) == {"nodekey:" + c * 64 for c in "234"}


@pytest.mark.slow
def test_up_interactive_prints_url_and_times_out(daemon, capsys):
    be, sock = daemon
    be.interactive = True
    code, _out, err = run(capsys, sock, "up", "--login-server=http://ctl", "--timeout=0.5s")
    assert code == 1
    assert "To authenticate, visit:" in err and "http://ctl/register/abc" in err
    assert err.strip().splitlines()[-1].startswith("meshscale: timeout waiting")


@pytest.mark.slow
def test_ping_direct_and_relay(daemon, capsys):
    be, sock = daemon
    be.state = "Running"
    code, out, _ = run(capsys, sock, "ping", "alpha")
    assert code == 0
    assert out.strip() == "pong from alpha (100.64.0.2) via 203.0.113.10:41641 in 1ms"
    code, out, err = run(capsys, sock, "ping", "-c", "1", "--until-direct=false", "100.64.0.3")
    assert code == 0, err
    assert out.strip() == "pong from beta (100.64.0.3) via DERP(lab) in 4ms"
    code, out, err = run(capsys, sock, "ping", "-c", "1", "beta")
    assert code == 1 and err.strip() == "meshscale: direct connection not established"


def test_ip_whois_netcheck_down_logout(daemon, capsys):
    be, sock = daemon
    be.state = "Running"
    assert run(capsys, sock, "ip")[1].split() == ["100.64.0.1", "fd7a:115c:a1e0::1"]
    assert run(capsys, sock, "ip", "-4")[1].split() == ["100.64.0.1"]
    assert run(capsys, sock, "ip", "-6", "alpha")[1].split() == ["fd7a:115c:a1e0::2"]
    code, out, _ = run(capsys, sock, "whois", "100.64.0.2")
    assert code == 0 and "alpha.lab.meshscale" in out and "alice@example.com" in out
    code, out, _ = run(capsys, sock, "netcheck")
    assert "IPv4: yes, 203.0.113.20:41641" in out and "Nearest DERP: lab" in out
    assert "\t* PortMapping: not checked\n" in out
    assert run(capsys, sock, "down")[0] == 0
    assert be.state == "Stopped"
    code, _, err = run(capsys, sock, "status")
    assert code == 1 and err == "meshscale: meshscale is stopped (run: meshscale up)\n"
    assert run(capsys, sock, "logout")[0] == 0
    assert [c[0] for c in be.calls] == ["down", "logout"]


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["up", "--login-server=http://c", "--advertise-routes=10.0.0.1/8"], 2, "host bits"),
        (["up", "--login-server=http://c", "--advertise-routes=10.0.0/8"], 2, "not an IP prefix"),
        (["set", "--advertise-routes=10.0.0.0/8,10.1.0.0/16"], 2, "overlap"),
        (["set", "--advertise-routes=100.64.0.0/24"], 2, "tailnet's own range"),
        (["set", "--advertise-exit-node", "--exit-node=100.64.0.2"], 2, "at the same time"),
        (["set", "--exit-node=nosuchpeer"], 2, "no peer found"),
        (["up", "--login-server=ftp://c"], 1, "--login-server must be"),
        (["up", "--timeout=soon"], 2, "invalid duration"),
        (["ping"], 2, "required"),
        (["ping", "nosuchpeer"], 1, "no peer found"),
        (["whois", "not-an-ip"], 1, "invalid IP address"),
        (["whois", "100.64.0.77"], 1, "no peer found with IP 100.64.0.77"),
        (["frobnicate"], 2, "invalid choice"),
        (["ip", "-4", "-6"], 2, "not allowed"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(daemon, capsys, argv, code, needle):
    be, sock = daemon
    be.state = "Running"
    got, _out, err = run(capsys, sock, *argv)
    assert got == code
    assert err.count("\n") == 1 and err.startswith("meshscale: ") and needle in err, err
    assert be.calls == [] or argv[0] == "ping"


def test_no_daemon_is_one_clear_line(tmp_path, capsys):
    code, _out, err = run(capsys, str(tmp_path / "none.sock"), "status")
    assert code == 1
    assert err.startswith("meshscale: failed to connect to local meshscaled")
    assert err.count("\n") == 1


def test_version_needs_no_daemon(capsys):
    code, out, _ = run(capsys, "/nonexistent", "version")
    assert code == 0 and out.splitlines()[0] == "0.1.0"


def test_up_reads_the_key_from_a_file(daemon, capsys, tmp_path):
    be, sock = daemon
    (tmp_path / "key").write_text("secret-key\n")
    code, _, err = run(
        capsys, sock, "up", "--login-server=http://c", f"--auth-key=file:{tmp_path}/key"
    )
    assert code == 0, err
    assert be.calls[0][1][1] == "secret-key"
    code, _, err = run(capsys, sock, "up", "--login-server=http://c", "--authkey=file:/nonexistent")
    assert code == 1 and err.startswith("meshscale: --authkey: cannot read /nonexistent")


def test_status_prints_health_after_the_table(daemon, capsys):
    be, sock = daemon
    be.state = "Running"
    be.health = ["control: connection refused"]
    code, out, _ = run(capsys, sock, "status")
    assert code == 0
    assert out.rstrip().endswith("# Health check:\n#     - control: connection refused")


# What tailscale 1.96.4's netcheck --format=json prints (less the omitempty GlobalV4Counters
# and GlobalV6Counters), durations in nanoseconds.
NETCHECK_KEYS = {
    "Now", "UDP", "IPv6", "IPv4", "IPv6CanSend", "IPv4CanSend", "OSHasIPv6", "ICMPv4",
    "MappingVariesByDestIP", "UPnP", "PMP", "PCP", "PreferredDERP",
    "RegionLatency", "RegionV4Latency", "RegionV6Latency", "GlobalV4", "GlobalV6", "CaptivePortal",
}  # fmt: skip


def test_netcheck_format_json_in_tailscales_shape_and_units(daemon, capsys):
    import json

    be, sock = daemon
    be.state = "Running"
    code, out, _ = run(capsys, sock, "netcheck", "--format=json")
    rep = json.loads(out)
    assert code == 0 and set(rep) == NETCHECK_KEYS
    assert rep["RegionLatency"] == {"900": 1_500_000}  # 1.5 ms as a Go duration
    assert rep["UDP"] is True and rep["GlobalV4"] == "203.0.113.20:41641"
    assert rep["PreferredDERP"] == 900 and rep["MappingVariesByDestIP"] is None
    code, line, _ = run(capsys, sock, "netcheck", "-format", "json-line")
    rep.pop("Now")
    assert code == 0 and line.count("\n") == 1 and json.loads(line).keys() - {"Now"} == rep.keys()
    assert set(json.loads(run(capsys, sock, "netcheck", "--json")[1])) == NETCHECK_KEYS
    code, _, err = run(capsys, sock, "netcheck", "--format=xml")
    assert code == 2 and err.count("\n") == 1 and "usage" in err


def test_netcheck_port_mapping_named_and_ordered_as_tailscale():
    from meshscale.cli.netcheck import port_mapping

    assert port_mapping({}) == "not checked"
    assert port_mapping({"UPnP": True, "PMP": True, "PCP": True}) == "UPnP, NAT-PMP, PCP"
    assert port_mapping({"UPnP": False, "PMP": True, "PCP": False}) == "NAT-PMP"
    assert port_mapping({"UPnP": False, "PMP": False, "PCP": False}) == ""


def test_up_advertise_tags_become_prefs(daemon, capsys):
    be, sock = daemon
    code, _out, err = run(capsys, sock, "up", "--login-server=http://ctl:8080", "--authkey", "k",
                          "--advertise-tags=tag:db, tag:web", "--timeout=5s")  # fmt: skip
    assert code == 0, err
    assert be.calls[0][1][0].AdvertiseTags == ["tag:db", "tag:web"]
    code, _out, err = run(capsys, sock, "up", "--login-server=http://c", "--advertise-tags=db")
    assert code == 2 and "tags must start with 'tag:'" in err, err
