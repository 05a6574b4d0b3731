"""Imports point down: the layer table in README's Development section is the rule.

Every module of the package sits in exactly one layer; it may import modules of its own layer
or a lower one (imports inside functions count too), and no circle of imports may close.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpsearch"
LAYERS = ("top", "middle", "base")


def layer_table() -> dict[str, int]:
    """module -> layer index (0 = top), from the README's layout table."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    layer_of: dict[str, int] = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] not in LAYERS:
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[1]):
            if name in modules:
                assert name not in layer_of, f"{name} is listed in two layers"
                layer_of[name] = LAYERS.index(cells[0])
    missing = modules - layer_of.keys()
    assert not missing, f"README's layout table does not place: {sorted(missing)}"
    return layer_of


def imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports, anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "hpsearch":
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # from hpsearch import api
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "hpsearch" and len(parts) > 1:
                    found.add(parts[1])
    return found - {module}


def test_every_import_points_down_or_sideways():
    layer_of = layer_table()
    upward = [
        f"{module} ({LAYERS[layer_of[module]]}) imports {target} ({LAYERS[layer_of[target]]})"
        for module in layer_of
        for target in sorted(imports_of(module))
        if target in layer_of and layer_of[target] < layer_of[module]
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {m: imports_of(m) & set(layer_table()) for m in layer_table()}
    cycles = []

    def visit(node, path):
        for target in sorted(graph[node]):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))
