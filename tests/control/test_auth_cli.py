"""``auth register|approve|reject --auth-id`` and ``nodes expire --disable`` against a server."""

from __future__ import annotations

import asyncio

import pytest
from tests.control.test_main import Served, run, run_json, served

from meshscale.control.main import build_parser

__all__ = ["served"]  # the fixture, re-exported for pytest


def test_parser_knows_auth_verbs() -> None:
    p = build_parser()
    a = p.parse_args(["auth", "register", "--auth-id", "abc", "--user", "u"])
    assert (a.command, a.verb, a.auth_id, a.user) == ("auth", "register", "abc", "u")
    assert p.parse_args(["auth", "reject", "--auth-id", "abc"]).verb == "reject"
    assert p.parse_args(["nodes", "expire", "-i", "1", "--disable"]).disable


def test_auth_approve_reject_and_expire_disable(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshscale.testing.controlclient import ControlClient

    assert run(capsys, *served.cli("users", "create", "carol"))[0] == 0

    async def flow() -> None:
        loop = asyncio.get_running_loop()
        rejected = ControlClient("127.0.0.1", served.port, hostname="rejected")
        await rejected.connect()
        first = await rejected.register()
        wait = asyncio.create_task(rejected.register(followup=first.AuthURL))
        await asyncio.sleep(0.2)
        code, _, err = await loop.run_in_executor(
            None, run, capsys, *served.cli("auth", "reject", "--auth-id", first.AuthURL)
        )
        assert code == 0, err
        answer = await asyncio.wait_for(wait, 10)
        assert not answer.MachineAuthorized
        assert "rejected" in answer.Error, answer
        code, _, err = await loop.run_in_executor(
            None, run, capsys, *served.cli("auth", "reject", "--auth-id", "nope")
        )
        assert code == 1 and "not found" in err

        ok = ControlClient("127.0.0.1", served.port, hostname="approved")
        await ok.connect()
        first = await ok.register()
        wait = asyncio.create_task(ok.register(followup=first.AuthURL))
        await asyncio.sleep(0.2)
        auth_id = first.AuthURL.rsplit("/", 1)[1]
        code, _, err = await loop.run_in_executor(
            None, run, capsys,
            *served.cli("auth", "approve", "--auth-id", auth_id, "--user", "carol"),
        )  # fmt: skip
        assert code == 0, err
        assert (await asyncio.wait_for(wait, 10)).MachineAuthorized
        for c in (rejected, ok):
            await c.close()

    asyncio.run(flow())
    (node,) = run_json(capsys, served, "nodes", "list")
    assert node["given_name"] == "approved"
    nid = str(node["id"])
    assert run(capsys, *served.cli("nodes", "expire", "-i", nid))[0] == 0
    assert run_json(capsys, served, "nodes", "list")[0].get("expiry")
    assert run(capsys, *served.cli("nodes", "expire", "-i", nid, "--disable"))[0] == 0
    assert not run_json(capsys, served, "nodes", "list")[0].get("expiry")
