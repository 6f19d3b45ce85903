"""The packages' layering: imports run one way, tfmot_discrete_demo -> tflite_export ->
tfmot_discrete, and the core needs none of the export's or the demo's packages."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each package, and the packages it must never import.
LAYERS = {
    "tfmot_discrete": {"tflite_export", "tfmot_discrete_demo", "sklearn", "tflite_micro"},
    "tflite_export": {"tfmot_discrete_demo", "sklearn"},
}


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_module_imports_a_package_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & LAYERS[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _module_imports(package: str) -> dict[str, set[str]]:
    """`{module: modules of the same package it imports}`, function-level imports
    included; `from package import name` of a non-module name counts as `__init__`."""
    pkg_dir = ROOT / package
    modules = {
        ".".join(path.relative_to(pkg_dir).with_suffix("").parts): path
        for path in sorted(pkg_dir.rglob("*.py"))
    }
    graph = {}
    for name, path in modules.items():
        here = name.split(".")[:-1]  # the sub-package the module is in
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [
                    alias.name.split(".")[1:]
                    for alias in node.names
                    if alias.name.split(".")[0] == package
                ]
                edges |= {".".join(t) or "__init__" for t in targets}
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                base += node.module.split(".") if node.module else []
            elif node.module and node.module.split(".")[0] == package:
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                sub = ".".join([*base, alias.name])
                if sub in modules:
                    edges.add(sub)
                elif ".".join(base) in modules:
                    edges.add(".".join(base))
                else:
                    edges.add(".".join([*base, "__init__"]))
        edges.discard(name)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as `[a, b, ..., a]`, or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_modules_inside_a_package_import_each_other_without_a_cycle(package):
    """Function-level imports count too: a lazy import hides a cycle, it does not remove it."""
    graph = _module_imports(package)
    assert "__init__" in graph and len(graph) > 3
    cycle = _find_cycle(graph)
    assert cycle is None, f"{package}: import cycle " + " -> ".join(cycle)


BLOCKER = """
import importlib.abc
import sys

BLOCKED = {"tflite_export", "sklearn", "tflite_micro"}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
        return None


sys.meta_path.insert(0, Blocker())
import numpy as np
import tfmot_discrete as td

try:
    import tflite_export  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker let tflite_export through")
model = td.keras.Sequential([td.keras.Input((4,)), td.keras.layers.Dense(3, name="d")])
qat = td.quantize_model(model, td.CodebookQuantizer([1, -1, 0.5, -0.5]))
plain = td.strip_quantization(qat)
values = set(np.unique(plain.get_layer("d").kernel.numpy()).tolist())
assert values <= {-1.0, -0.5, 0.5, 1.0}, values
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("loaded:", loaded)
# The Keras 3 path loads on first use of `td.keras3`, with no import of its own.
assert "tfmot_discrete.keras3" not in sys.modules
assert td.keras3.DiscreteMultiplier([1, -1]).quantizer.codebook.values.tolist() == [-1.0, 1.0]
print("td.keras3:", td.keras3.__name__)
"""


def test_core_imports_and_quantizes_without_export_demo_packages():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout
    assert "td.keras3: tfmot_discrete.keras3" in result.stdout


def test_python_m_tfmot_discrete_points_to_the_demo():
    result = subprocess.run(
        [sys.executable, "-m", "tfmot_discrete", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "tfmot-discrete demo" in result.stderr
