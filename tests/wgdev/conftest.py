"""Fixtures for the UAPI server tests: a server on its own event loop thread, short socket paths."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshscale.lab import Lab, cleanup_stale
from meshscale.wgdev.uapi_server import UAPIServer, open_uapi_listener, socket_path

from .fakes import FakeBackend

T = TypeVar("T")
ANSWER_TIMEOUT = 5.0  # seconds; a bound on every blocking wait in these tests


class RunningServer:
    """A UAPIServer on an event loop in a background thread (as the daemon's loop would be)."""

    def __init__(self, backend: FakeBackend, listener: socket.socket, **kwargs: Any) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="uapi-test-loop")
        self.thread.start()
        self.server = UAPIServer(backend, listener, **kwargs)
        self.path = self.server.path
        self.call(self.server.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(ANSWER_TIMEOUT)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            self.call(close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(ANSWER_TIMEOUT)
            self.loop.close()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    base = Path(tempfile.mkdtemp(prefix="msuapi"))
    try:
        yield base / "run"  # not created yet: the server must create it (0755)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(taken_ports={1})


@pytest.fixture
def running(backend: FakeBackend, sock_dir: Path) -> Iterator[RunningServer]:
    server = RunningServer(backend, open_uapi_listener("wgt0", str(sock_dir)))
    try:
        yield server
    finally:
        server.stop()


def unique_ifname() -> str:
    return "msu" + uuid.uuid4().hex[:8]


@pytest.fixture
def wg_server(backend: FakeBackend) -> Iterator[tuple[str, RunningServer]]:
    """A server at the real /var/run/wireguard/<unique>.sock, where wg(8) looks."""
    if shutil.which("wg") is None:
        pytest.skip("needs the wg command")
    ifname = unique_ifname()
    try:
        listener = open_uapi_listener(ifname)
    except PermissionError:
        pytest.skip("needs write access to /var/run/wireguard")
    server = RunningServer(backend, listener)
    try:
        yield ifname, server
    finally:
        server.stop()
        Path(socket_path(ifname)).unlink(missing_ok=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh meshscale.lab.Lab (root only), closed after the test."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("lab tests need root and the ip command")
    cleanup_stale()
    with Lab(hint="wgd", workdir=tmp_path / "lab") as the_lab:
        yield the_lab
