"""The admin CLI's command line: the verbs it knows and the server it talks to."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshscale.control.cli import AdminClient
from meshscale.control.cli.commands import VERB_ALIASES
from meshscale.control.main import build_parser


def test_parser_knows_headscale_verbs() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "preauthkeys",
            "create",
            "-u",
            "alice",
            "--reusable",
            "--ephemeral",
            "-e",
            "24h",
            "--tags",
            "tag:x",
        ]
    )
    assert (args.user, args.reusable, args.ephemeral, args.expiration, args.tags) == (
        "alice",
        True,
        True,
        "24h",
        ["tag:x"],
    )
    args = parser.parse_args(["nodes", "register", "--user", "u", "--key", "k"])
    assert (args.user, args.key) == ("u", "k")


@pytest.mark.parametrize(("argv", "verb"), [
    (["users", "c", "bob"], "create"),
    (["users", "new", "bob"], "create"),
    (["preauthkeys", "c", "-u", "a"], "create"),
    (["preauthkeys", "new", "-u", "a"], "create"),
    (["users", "del", "--name", "bob"], "delete"),
    (["nodes", "del", "-i", "1"], "delete"),
    (["nodes", "rm", "-i", "1"], "delete"),
    (["preauthkeys", "revoke", "--id", "1"], "expire"),
    (["apikeys", "revoke", "--id", "1"], "expire"),
    (["nodes", "exp", "-i", "1"], "expire"),
    (["users", "ls"], "list"),
    (["apikeys", "show"], "list"),
])  # fmt: skip
def test_headscale_aliases_reach_their_verb(argv: list[str], verb: str) -> None:
    """Headscale's cobra aliases parse with the verb's own flags and run the verb itself."""
    args = build_parser().parse_args(argv)
    assert VERB_ALIASES.get(args.verb, args.verb) == verb


def test_client_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshscale.control.cli import UsageError, connect
    from meshscale.control.main import build_parser as parser
    from meshscale.control.main import load

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "cli:\n  address: ctl.example:50443\n  api_key: hskey-api-x\nunix_socket: my.sock\n"
    )

    def client(*argv: str) -> AdminClient:
        args = parser().parse_args(
            ["-c", str(cfg_path), "--state-dir", str(tmp_path), *argv, "users", "list"]
        )
        return connect(args, load(args))

    monkeypatch.delenv("MESHSCALE_CONTROL_URL", raising=False)
    remote = client()
    assert (remote.url, remote.api_key) == ("https://ctl.example:50443", "hskey-api-x")
    assert client("--socket", "/x.sock").unix_socket == "/x.sock"
    assert client("--url", "http://h:1", "--api-key", "k").url == "http://h:1"
    cfg_path.write_text("unix_socket: my.sock\n")
    assert client().unix_socket == str(tmp_path / "my.sock")
    monkeypatch.setenv("MESHSCALE_CONTROL_URL", "http://env:2")
    with pytest.raises(UsageError, match="--api-key"):
        client()
