"""``meshscale up --force-reauth`` and ``meshscale login``: log out, then start a fresh login."""

from __future__ import annotations

from tests.cli.localapi import run


def test_up_force_reauth_logs_out_before_starting(daemon, capsys):
    be, sock = daemon
    code, _, err = run(capsys, sock, "up", "--login-server=http://ctl", "--authkey=k",
                       "--force-reauth", "--timeout=5s")  # fmt: skip
    assert code == 0, err
    assert [c[0] for c in be.calls] == ["logout", "start"]


def test_plain_up_does_not_log_out(daemon, capsys):
    be, sock = daemon
    code, _, err = run(capsys, sock, "up", "--login-server=http://ctl", "--authkey=k",
                       "--timeout=5s")  # fmt: skip
    assert code == 0, err
    assert [c[0] for c in be.calls] == ["start"]


def test_login_is_up_with_a_fresh_login(daemon, capsys):
    be, sock = daemon
    code, _, err = run(capsys, sock, "login", "--login-server=http://ctl", "--authkey=k",
                       "--timeout=5s")  # fmt: skip
    assert code == 0, err
    assert [c[0] for c in be.calls] == ["logout", "start"]
    prefs, key, _ = be.calls[1][1]
    assert (prefs.ControlURL, key) == ("http://ctl", "k")
