"""Run meshscale-wireguard's main with a test engine, as a separate process.

    python -m tests.wgdev.launcher {fake|tun|real} SOCKET_DIR [meshscale-wireguard args...]

``fake``: FakeEngine (no TUN); ``tun``: TunFakeEngine (a real TUN, no data plane);
``real``: the default factory (meshscale.wgengine.Engine.create).
"""

from __future__ import annotations

import sys

from meshscale.wgdev.main import EngineFactory, main

from .fakes import FakeEngine, TunFakeEngine

FACTORIES: dict[str, EngineFactory | None] = {
    "fake": FakeEngine.create,
    "tun": TunFakeEngine.create,
    "real": None,
}

if __name__ == "__main__":
    kind, socket_dir, *argv = sys.argv[1:]
    sys.exit(main(argv, engine_factory=FACTORIES[kind], socket_dir=socket_dir))
