"""The layout rule, enforced by walking every module's imports (README "Layout"):

- a service (`services/<name>/`) imports `services.common`, the enforcement-action
  contract `services.actions` and the generated protos, never another service's
  modules;
- `services.common` and `services.actions` import no service;
- no import cycle inside a service.

Imports are read from the source (`ast`), all of them: module level, inside
functions, and under `if TYPE_CHECKING:`, since each is a dependency a reader follows.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

SERVICES = ROOT / "services"
SHARED = ("common", "actions")

#: Cycles tolerated for now, each naming its modules (none: keep it that way).
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SERVICES.rglob("*.py") if "__pycache__" not in p.parts}


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The `services.*` modules `path` imports (a `from package import module` names the
    module; relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "services" or target.startswith("services."):
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                if target != name:
                    out.add(target)
    return out


def owner(module: str) -> str:
    """The top-level package under services/ a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_no_service_imports_another_services_modules() -> None:
    wrong = []
    for module, targets in sorted(graph().items()):
        mine = owner(module)
        for target in sorted(targets):
            theirs = owner(target)
            if not theirs or theirs == mine or theirs in SHARED and mine != "common":
                continue
            wrong.append(f"{module} imports {target}")
    # services.common imports nothing above it; services.actions only services.common.
    assert wrong == [], "\n".join(wrong)


def test_the_shared_packages_import_no_service() -> None:
    g = graph()
    for module, targets in g.items():
        if owner(module) in SHARED:
            assert {owner(t) for t in targets} <= {"common", "actions"}, (module, targets)
            if owner(module) == "common":
                assert {owner(t) for t in targets} <= {"common"}, (module, targets)


def cycles(g: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module, within each service (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if owner(w) != owner(v):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_a_service() -> None:
    found = set(cycles(graph()))
    new = found - KNOWN_CYCLES
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)


def test_the_walk_sees_a_cycle_and_a_crossing(tmp_path) -> None:
    """The checks above can fail: a two-module cycle and a cross-service import are found."""
    g = {
        "services.enforcer.a": {"services.enforcer.b", "services.monitor.x"},
        "services.enforcer.b": {"services.enforcer.a", "services.common.kafka"},
        "services.monitor.x": set(),
    }
    assert cycles(g) == [frozenset({"services.enforcer.a", "services.enforcer.b"})]
    known = {"services.enforcer.a": Path(), "services.monitor.x": Path()}
    source = "from services.monitor import x\nimport services.enforcer.a\n"
    path = tmp_path / "c.py"
    path.write_text(source)
    assert imports(path, "services.enforcer.c", known) == {"services.monitor.x", "services.enforcer.a"}
