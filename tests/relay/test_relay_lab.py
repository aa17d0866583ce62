"""meshscale-derp in real namespaces: STUN behind an easy NAT, DERP between UDP-blocked hosts."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshscale.key import NodePrivate
from meshscale.lab import Lab, NatKind

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PY = sys.executable


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"lab tests need the {tool!r} command"
    return None


def wait_for(cond: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_stun_and_derp_across_lab_nats(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Lab(hint="drp", workdir=tmp_path / "lab") as lab:
        pub = lab.add_public_host("derp")
        easy = lab.add_nat("easy", NatKind.EASY)
        blk1 = lab.add_nat("blk1", NatKind.UDP_BLOCK)
        blk2 = lab.add_nat("blk2", NatKind.UDP_BLOCK)
        h_easy = lab.add_private_host("he", behind=easy)
        h1 = lab.add_private_host("h1", behind=blk1)
        h2 = lab.add_private_host("h2", behind=blk2)
        server = pub.spawn(
            [
                PY,
                "-m",
                "meshscale.relay.main",
                "-dev",
                "-a",
                ":3340",  # all addresses: STUN on both the IPv4 and the IPv6 socket
                "-stun-port",
                "3478",
                "--verbose",
            ],
            log_name="derper",
        )
        wait_for(lambda: "stun: listening" in server.log_text(), "the relay to start")

        # STUN through the easy NAT reports the NAT's public address.
        out = h_easy.run([PY, "-m", "meshscale.relay.probe", "stun", f"{pub.ip}:3478"])
        ip, port = out.stdout.split()
        assert ip == str(easy.public_ip)
        assert 0 < int(port) < 65536

        # IPv6 (no NAT on the lab internet): a public host sees its own address.
        cli = lab.add_public_host("cli")
        assert cli.ip6 is not None
        out6 = cli.run([PY, "-m", "meshscale.relay.probe", "stun", f"[{pub.ip6}]:3478"])
        assert out6.stdout.split()[0] == str(cli.ip6)

        # UDP is blocked behind blk1/blk2: STUN fails, DERP over TCP still relays.
        blocked = h1.run(
            [PY, "-m", "meshscale.relay.probe", "--timeout", "1.5", "stun", f"{pub.ip}:3478"],
            check=False,
        )
        assert blocked.returncode != 0
        url = f"http://{pub.ip}:3340/derp"
        receiver = h1.spawn(
            [PY, "-m", "meshscale.relay.probe", "recv", url, "--key-seed", "01", "--count", "3"],
            log_name="recv",
        )
        wait_for(lambda: "ready" in receiver.log_text(), "the receiver to log in")
        to = NodePrivate.generate(b"\x01" * 32).public().text()
        h2.run(
            [
                PY,
                "-m",
                "meshscale.relay.probe",
                "send",
                url,
                "--key-seed",
                "02",
                "--to",
                to,
                "--count",
                "3",
            ]
        )
        assert receiver.wait(timeout=10) == 0
        lines = [ln for ln in receiver.log_text().splitlines() if ln.startswith("packet ")]
        sender = NodePrivate.generate(b"\x02" * 32).public().text()
        assert lines == [f"packet {sender} hello {i}" for i in range(3)]
        server.stop()
