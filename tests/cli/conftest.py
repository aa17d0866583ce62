from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshscale.testing.fakebackend import FakeBackend, ThreadedLocalAPI


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[FakeBackend, str]]:
    be = FakeBackend()
    path = tmp_path / "ms.sock"
    with ThreadedLocalAPI(be, path):
        yield be, str(path)
