"""``meshscale up --force-reauth`` (log out, log in) and ``meshscale login`` (a new profile)."""

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


def test_login_is_up_on_a_new_profile(daemon, capsys):
    be, sock = daemon
    code, _, err = run(capsys, sock, "login", "--login-server=http://ctl", "--authkey=k",
                       "--timeout=5s")  # fmt: skip
    assert code == 0, err
    # a new empty profile (PUT profiles/), never a logout: the current login stays saved
    assert [c[0] for c in be.calls] == ["switch_profile", "start"]
    assert be.calls[0][1] is None
    prefs, key, _ = be.calls[1][1]
    assert (prefs.ControlURL, key) == ("http://ctl", "k")
