"""Who may import whom: the sans-IO line, the program boundaries and no import cycles.

docs/architecture.md draws the layers; this test enforces them, in the manner of tailscale's
cmd/tailscaled/deps_test.go (a program's dependency list is checked, not trusted):

    cores       key packet wireguard stun disco derp controlbase tailcfg policy filter dns
                magicsock portmap. No I/O, no clock, no randomness; they import only cores.
    libraries   io controlhttp derphttp wgengine: drivers shared by several programs. They
                import cores and lower libraries, never a program.
    programs    wgdev relay control node cli: one per executable. A program imports cores,
                libraries and, where PROGRAM_DEPS lists them, another program's public
                modules (control embeds relay's DERP server), nothing else of it.
    harnesses   testing (lab-free fakes and simulations; may import product code) and lab
                (real namespaces; may import everything). No product module imports either.

Every import counts: top-level, inside functions, and under ``if TYPE_CHECKING:``; a cycle
that only type checking sees is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "meshscale"

CORES = frozenset(
    {"key", "packet", "wireguard", "stun", "disco", "derp", "controlbase", "tailcfg",
     "policy", "filter", "dns", "magicsock", "portmap", "lazy"}
)  # fmt: skip
# A library may import cores and the libraries listed for it.
LIBRARY_DEPS: dict[str, frozenset[str]] = {
    "io": frozenset(),
    "controlhttp": frozenset({"io"}),
    "derphttp": frozenset({"io"}),
    "wgengine": frozenset({"io", "derphttp"}),
}
LIBRARIES = frozenset(LIBRARY_DEPS)
# A program may import cores, every library, and, of another program, only the modules
# listed here: its public surface for embedding.
PROGRAM_DEPS: dict[str, dict[str, frozenset[str]]] = {
    "wgdev": {},
    "relay": {},
    # meshscale-control embeds the DERP server and STUN listener (Headscale's embedded DERP).
    "control": {"relay": frozenset({"", "app", "server", "stun_server", "metrics"})},
    "node": {},
    "cli": {},
}
PROGRAMS = frozenset(PROGRAM_DEPS)
HARNESSES = frozenset({"testing", "lab"})
LAYERS = CORES | LIBRARIES | PROGRAMS | HARNESSES

# Standard-library modules a core must not touch: they do I/O, read the clock or draw randomness.
FORBIDDEN_IN_CORES = frozenset(
    {"asyncio", "socket", "threading", "subprocess", "sqlite3", "time", "random"}
)


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # importing module, e.g. "meshscale.node.backend"
    target: str  # imported module, e.g. "meshscale.control.state"
    path: Path
    line: int

    def __str__(self) -> str:
        return f"src/meshscale/{self.path.relative_to(SRC)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = ["meshscale", *path.relative_to(SRC).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


MODULES: dict[str, Path] = {module_name(p): p for p in all_files()}


def _imports_of(path: Path) -> Iterator[Import]:
    source = module_name(path)
    # The package a relative import starts from: the module's own package for __init__.py.
    package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"  # `from pkg import submodule`
                yield Import(source, sub if sub in MODULES else module, path, node.lineno)


IMPORTS: list[Import] = [imp for p in all_files() for imp in _imports_of(p)]


def layer(module: str) -> str:
    """The top-level package (or module) under meshscale: "node", "key", ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def internal(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.target.split(".")[0] == "meshscale" and layer(i.target)]


def from_layer(name: str) -> list[Import]:
    return [i for i in IMPORTS if layer(i.source) == name]


def report(violations: list[str], rule: str) -> str:
    unique = list(dict.fromkeys(violations))  # one line per import statement
    return f"{rule}:\n  " + "\n  ".join(unique)


# ---- the map itself -----------------------------------------------------------------------


def test_every_package_has_a_layer() -> None:
    """A new top-level package must be placed in a layer here before it can be imported."""
    found = {layer(m) for m in MODULES if layer(m)}
    assert found - LAYERS == set(), f"unclassified packages under src/meshscale: {found - LAYERS}"


def test_there_are_core_modules() -> None:
    cores = [m for m in MODULES if layer(m) in CORES]
    assert len(cores) > 20, "no core modules found: the layering test would check nothing"


# ---- cores: the sans-IO line --------------------------------------------------------------


def core_files() -> list[Path]:
    return [p for m, p in MODULES.items() if layer(m) in CORES]


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_does_no_io(path: Path) -> None:
    """A core module imports no I/O, clock or randomness, and nothing above the line."""
    for imp in _imports_of(path):
        top = imp.target.split(".")[0]
        assert top not in FORBIDDEN_IN_CORES, f"{imp}: cores do no I/O (docs/architecture.md)"
        if top == "meshscale" and layer(imp.target):
            assert layer(imp.target) in CORES, f"{imp}: a core imports only cores"


# ---- libraries and programs ---------------------------------------------------------------


@pytest.mark.parametrize("lib", sorted(LIBRARIES))
def test_library_imports_only_cores_and_lower_libraries(lib: str) -> None:
    allowed = CORES | LIBRARY_DEPS[lib] | {lib}
    bad = [f"{i}" for i in internal(from_layer(lib)) if layer(i.target) not in allowed]
    assert not bad, report(bad, f"{lib} may import cores and {sorted(LIBRARY_DEPS[lib])}")


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_program_imports_no_other_program_internals(prog: str) -> None:
    """Programs meet through cores and libraries. Where one embeds another (control runs
    the DERP server), it imports only the modules PROGRAM_DEPS lists."""
    bad = []
    for i in internal(from_layer(prog)):
        target = layer(i.target)
        if target not in PROGRAMS or target == prog:
            continue
        surface = PROGRAM_DEPS[prog].get(target)
        module = i.target.split(".", 2)[2] if i.target.count(".") >= 2 else ""
        if surface is None:
            bad.append(f"{i}: {prog} must not import {target}")
        elif module.split(".")[0] not in surface:
            names = ", ".join(
                f"meshscale.{target}" + (f".{m}" if m else "") for m in sorted(surface)
            )
            bad.append(f"{i}: {prog} may use only {names}")
    assert not bad, report(bad, f"{prog} reaches into another program")


def test_node_imports_neither_control_nor_relay() -> None:
    """meshscaled talks to control through controlhttp and to DERP through derphttp."""
    bad = [f"{i}" for i in internal(from_layer("node")) if layer(i.target) in {"control", "relay"}]
    assert not bad, report(bad, "node must not import control or relay")


def test_cli_imports_neither_control_nor_relay() -> None:
    """The CLI speaks only to meshscaled's local API."""
    bad = [f"{i}" for i in internal(from_layer("cli")) if layer(i.target) in {"control", "relay"}]
    assert not bad, report(bad, "cli must not import control or relay")


# ---- harnesses ----------------------------------------------------------------------------


def test_no_product_module_imports_testing_or_lab() -> None:
    product = CORES | LIBRARIES | PROGRAMS
    bad = [
        f"{i}"
        for i in internal(IMPORTS)
        if layer(i.source) in product and layer(i.target) in HARNESSES
    ]
    assert not bad, report(bad, "product code must not import meshscale.testing or meshscale.lab")


TEST_ONLY_DISTRIBUTIONS = frozenset({"pytest", "hypothesis", "noise"})  # the [test] extras


def test_no_module_imports_test_only_libraries() -> None:
    """The package installs without its [test] extras, testing/ and lab/ included."""
    bad = [f"{i}" for i in IMPORTS if i.target.split(".")[0] in TEST_ONLY_DISTRIBUTIONS]
    assert not bad, report(bad, "src/ must not import pytest, hypothesis or noiseprotocol")


def test_testing_does_not_import_lab() -> None:
    """meshscale.testing runs without root or namespaces; only lab/ may import lab/."""
    bad = [f"{i}" for i in internal(from_layer("testing")) if layer(i.target) == "lab"]
    assert not bad, report(bad, "testing must not import meshscale.lab")


# ---- cycles -------------------------------------------------------------------------------


def import_graph() -> dict[str, dict[str, Import]]:
    """module -> {imported module: the first import of it}, within meshscale only."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for i in IMPORTS:
        if i.target in MODULES and i.target != i.source:
            graph[i.source].setdefault(i.target, i)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph has hundreds of modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def one_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """A shortest cycle through the component's first module, as the imports that form it."""
    members = set(component)
    start = component[0]
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child, imp in sorted(graph[node].items()):
                if child not in members:
                    continue
                if child == start:
                    return [*paths[node], imp]
                if child not in paths:
                    paths[child] = [*paths[node], imp]
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - SCC guarantees one


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = []
    for component in strongly_connected(graph):
        cycle = one_cycle(graph, component)
        found.append(f"{len(component)} modules: " + " -> ".join(
            [cycle[0].source, *(i.target for i in cycle)]
        ) + "".join(f"\n      {i}" for i in cycle))  # fmt: skip
    assert not found, report(found, "import cycles (each listed with the imports forming it)")


def test_cycle_finder_finds_a_planted_cycle() -> None:
    """The cycle check cannot pass vacuously: a planted a -> b -> c -> a is found."""
    p = SRC / "key.py"
    graph: dict[str, dict[str, Import]] = {
        "a": {"b": Import("a", "b", p, 1)},
        "b": {"c": Import("b", "c", p, 2)},
        "c": {"a": Import("c", "a", p, 3), "d": Import("c", "d", p, 4)},
        "d": {},
    }
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert [i.target for i in one_cycle(graph, ["a", "b", "c"])] == ["b", "c", "a"]


def test_imports_are_resolved() -> None:
    """The graph sees real edges: node's backend imports the magicsock core, relative
    imports resolve, and `from pkg import module` points at the module."""
    graph = import_graph()
    assert any(layer(t) == "magicsock" for t in graph["meshscale.node.backend"])
    assert "meshscale.cli.localclient" in graph["meshscale.cli.main"]
    assert "meshscale.cli.up" in graph["meshscale.cli.main"]
