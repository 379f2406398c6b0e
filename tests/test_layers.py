"""The house's floors: no import from a lower floor to a higher one, and no circle.

Floors, bottom up (docs/architecture.md):
  0  models.contract   the transaction interface, register map, glibc's parameters, layout
  1  rtl, models       the Amaranth RTL and the golden models: each on the contract only
  2  qbridge           the product: device server, transports, RTL runtime, launcher
  3  tb                the testbench (it verifies with the product's simulator build)
  4  bench             benchmarks and robustness engines
  5  tests             users of everything (they exercise bench's engines too)
Every import counts, lazy ones inside functions too: they run as surely, only later.
"""

from __future__ import annotations

import ast
from pathlib import Path

from models.contract.layout import BRIDGE, REPO

PACKAGES = {"models": REPO / "models", "rtl": REPO / "rtl", "qbridge": BRIDGE / "qbridge",
            "tb": REPO / "tb", "bench": REPO / "bench", "tests": REPO / "tests"}
FLOOR = {"models.contract": 0, "rtl": 1, "models": 1, "qbridge": 2, "tb": 3, "bench": 4,
         "tests": 5}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _room(module: str) -> str:
    return "models.contract" if module.startswith("models.contract") else module.split(".")[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (resolved to the longest known name)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import sub` imports the submodule; `from pkg import name`, pkg.
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods
                         else node.module for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    targets.add(name)
        graph[mod] = targets
    return graph


def test_no_import_goes_up_a_floor_or_sideways_on_floor_1() -> None:
    bad = []
    for mod, targets in import_graph().items():
        for target in targets:
            a, b = _room(mod), _room(target)
            if FLOOR[b] > FLOOR[a] or (a != b and FLOOR[a] == FLOOR[b]):
                bad.append(f"{mod} ({a}, floor {FLOOR[a]}) -> {target} ({b}, floor {FLOOR[b]})")
    assert not bad, "imports against the floors:\n  " + "\n  ".join(sorted(bad))


def test_the_bridge_never_imports_the_testbench() -> None:
    bad = [f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("qbridge")
           for t in ts if t.startswith("tb")]
    assert not bad, f"the product imports the testbench: {bad}"


def test_no_circle_between_modules() -> None:
    graph = import_graph()
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_check_sees_a_planted_upward_import() -> None:
    """The check itself can fail: the graph has the arrows it should."""
    graph = import_graph()
    assert "models.contract.transaction" in graph["rtl.transaction"], "rtl -> contract missing"
    assert "qbridge.core" in graph["qbridge.proxy.transport"], "proxy -> core missing"
    assert FLOOR[_room("qbridge.core")] > FLOOR[_room("models.device")]
