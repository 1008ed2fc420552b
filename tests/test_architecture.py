"""The package's layout: every import in edgecnn/ (function-level ones too) runs one way, top to bottom.

Layers, lowest first; a module may import its own layer and the layers below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edgecnn"
LAYERS = ["core", "config", "analysis", "data", "models", "tasks", "runtime", "devices", "compression", "pipeline",
          "api", "cli"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every edgecnn module `path` imports, at any depth of the file (functions and TYPE_CHECKING too)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules and n != me)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (its lazy API re-exports)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def test_every_module_belongs_to_a_layer():
    strays = [m for m in _modules() if _layer(m) == -1 and m != "edgecnn.__main__"]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_imports_run_top_to_bottom():
    wrong = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        if lm is None or lm == -1:
            continue
        for dep in deps:
            ld = _layer(dep)
            if ld is not None and ld > lm:
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_agent_is_standalone():
    """The on-device agent is copied alone to a device: it imports nothing from edgecnn."""
    assert not _graph()["edgecnn.runtime.agent"]
