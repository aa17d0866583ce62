"""Fixtures for the real-device tests under tests/io (marked `lab`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshscale.lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh Lab of namespaces, torn down after the test (also on failure)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        pytest.skip("lab tests need root, ip(8) and /dev/net/tun")
    with Lab(hint="io", workdir=tmp_path / "lab") as the_lab:
        yield the_lab
