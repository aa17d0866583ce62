"""Fixtures for tests that build real network namespaces (marked `lab`)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshscale.lab import Lab, cleanup_stale


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None. CI runs as root, so there they must run."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"lab tests need the {tool!r} command"
    return None


@pytest.fixture(scope="session")
def lab_possible() -> None:
    """Session-scoped twin of need_lab, for module-scoped fixtures that build a Lab."""
    reason = lab_skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def need_lab() -> None:
    """Skip unless lab tests can run (for tests that build their own Lab)."""
    reason = lab_skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A fresh Lab (closed after the test); its logs stay in the test's tmp_path."""
    reason = lab_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    cleanup_stale()
    hint = re.sub(r"[^a-z0-9]", "", request.node.name.removeprefix("test_").lower())[:3]
    with Lab(hint=hint or "lab", workdir=tmp_path / "lab") as the_lab:
        yield the_lab
