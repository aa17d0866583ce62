"""Run the node CLI against a FakeBackend served on a real local-API unix socket."""

from __future__ import annotations

import pytest

from meshscale.cli.main import main


def run(capsys: pytest.CaptureFixture[str], sock: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--socket", sock, *argv])
    out, err = capsys.readouterr()
    return code, out, err
