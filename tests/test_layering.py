"""The sans-IO line: protocol cores must not import anything that does I/O or reads the clock.

STYLE.md section 2: imports point only upward across the line. A core module that imports
asyncio, socket, threading, subprocess, sqlite3, time or random is a defect.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "meshscale"
CORE_PACKAGES = [
    "packet",
    "filter",
    "wireguard",
    "derp",
    "controlbase",
    "tailcfg",
    "policy",
    "dns",
    "magicsock",
]
CORE_MODULES = ["key.py", "stun.py", "disco.py"]
FORBIDDEN = {"asyncio", "socket", "threading", "subprocess", "sqlite3", "time", "random"}
IO_PACKAGES = {"io", "wgengine", "wgdev", "relay", "control", "node", "cli", "lab", "testing"}


def core_files() -> list[Path]:
    files: list[Path] = []
    for pkg in CORE_PACKAGES:
        files.extend(sorted((SRC / pkg).rglob("*.py")))
    files.extend(SRC / m for m in CORE_MODULES if (SRC / m).exists())
    return files


def imported_modules(path: Path) -> set[str]:
    package = ["meshscale", *path.relative_to(SRC).parent.parts]
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            names.add(".".join([*base, node.module] if node.module else base))
    return names


def test_there_are_core_modules() -> None:
    assert core_files(), "no core modules found: the layering test would check nothing"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_does_no_io(path: Path) -> None:
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.relative_to(SRC)} imports {name}"
        if top == "meshscale":
            parts = name.split(".")
            assert len(parts) < 2 or parts[1] not in IO_PACKAGES, (
                f"{path.relative_to(SRC)} imports the I/O layer ({name})"
            )
