from __future__ import annotations

import pytest

from meshscale.node.main import build_parser, main, state_path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--tun=userspace-networking"], "userspace-networking is not supported"),
        (["--tun=a-very-long-interface-name"], "invalid interface name"),
        (["--state=mem:"], "only file paths"),
        (["--port=70000"], "not a UDP port"),
        (["--port=x"], "invalid int value"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_flags_one_line_exit_2(capsys, argv, needle):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("meshscaled: ") and err.count("\n") == 1 and needle in err


def test_state_path_from_flags():
    p = build_parser()
    assert str(state_path(p.parse_args(["--state", "/x/s.json"]))) == "/x/s.json"
    assert str(state_path(p.parse_args(["--statedir", "/d"]))) == "/d/meshscaled.state"
    assert str(state_path(p.parse_args([]))) == "/var/lib/meshscale/meshscaled.state"
    assert p.parse_args([]).port == 41641
