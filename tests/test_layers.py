"""The package's layers (docs/design.md, "Layers"): every import of a loraexp module, at module
level or inside a function, goes to the same layer or one below it, and no two modules import
each other, directly or through others. Read from the source with :mod:`ast`; nothing is
imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "loraexp"

# Lowest first; the same order as docs/design.md's "Layers" table.
LAYERS = ("errors", "config", "results", "analysis", "tasks", "model", "run", "sweep", "report", "cli")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The loraexp modules ``name`` imports (an imported name that is a module counts as that module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
            targets = targets or [module]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "loraexp" and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module`` (``loraexp.<layer>...``)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise KeyError(module)
    return LAYERS.index(parts[1])


def test_every_module_is_in_a_layer():
    outside = [m for m in MODULES if m != "loraexp" and m.split(".")[1] not in LAYERS]
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


def test_package_root_holds_at_most_three_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 3, root


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "loraexp"))
def test_imports_run_down_the_layers(module):
    up = sorted(t for t in GRAPH[module] if t == "loraexp" or layer_of(t) > layer_of(module))
    assert not up, f"{module} (layer {LAYERS[layer_of(module)]}) imports from above it: {up}"


def test_no_import_cycle():
    # Tarjan's strongly connected components over the module graph
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from loraexp.sweep.runner import run_sweep\n")
    assert "loraexp.sweep.runner" in _imports("loraexp.config.bad", bad)
    assert layer_of("loraexp.sweep.runner") > layer_of("loraexp.config.bad")


def _design_stages() -> list[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## The run as a recipe"):]
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    return re.findall(r"[a-z_]+(?=\s|\)|$)", block.replace("|", " ").replace("(", " "))


def _run_experiment_calls() -> list[str]:
    tree = ast.parse((PACKAGE / "run" / "recipe.py").read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_experiment"]
    names = []
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "recipe" \
                and isinstance(node.ctx, ast.Load):
            names.append((node.lineno, node.col_offset, node.attr))
    return [name for _, _, name in sorted(names)]


def test_design_md_lists_the_recipes_stages_in_the_order_run_experiment_calls_them():
    words = {"at", "a", "pruning", "rung", "on", "an", "exception", "signal"}
    documented = [w for w in _design_stages() if w not in words]
    called = [n for n in _run_experiment_calls() if n not in ("run_stage", "guard", "store", "record")]
    assert documented == list(dict.fromkeys(called))  # fail is called for three kinds of exception


def test_every_attribute_of_the_recipe_is_set_in_init():
    tree = ast.parse((PACKAGE / "run" / "recipe.py").read_text())
    (recipe,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LoraRecipe"]
    assigned: dict[str, set[str]] = {}
    for method in (n for n in recipe.body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            for target in targets:
                for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        assigned.setdefault(method.name, set()).add(t.attr)
    later = {m: attrs - assigned["__init__"] for m, attrs in assigned.items() if m != "__init__"}
    assert not any(later.values()), f"attributes first set outside __init__: {later}"
