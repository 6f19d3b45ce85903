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
                for t in targets:
                    name = ".".join(t) or "__init__"
                    edges.add(name if name in modules else f"{name}.__init__")
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
                elif f"{sub}.__init__" in modules:  # a sub-package
                    edges.add(f"{sub}.__init__")
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


# The folders of `tfmot_discrete` are its architecture: a NumPy core, the TF-MOT
# plugin on tf_keras (`tfk`), the Keras 3 path (`keras3`) and the tools serving
# both, under `api.py` / `__init__.py`.
PKG = ROOT / "tfmot_discrete"
TF_STACK = {"tensorflow", "tf_keras", "tensorflow_model_optimization"}


def _imports(path: pathlib.Path, module_level_only=False) -> set[str]:
    """Dotted names `path` imports (absolute; relative ones resolved), with
    `from a import b` giving `a.b`; function-level imports too unless asked."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    here = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - (node.level - 1)] + [node.module or ""])
            else:
                base = node.module or ""
            base = base.strip(".")
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def _files(folder: str) -> list[pathlib.Path]:
    return sorted((PKG / folder).rglob("*.py"))


def _offenders(folder, forbidden, module_level_only=False) -> dict:
    found = {}
    for path in _files(folder):
        bad = sorted(
            name
            for name in _imports(path, module_level_only)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_core_imports_no_framework_and_no_other_folder():
    forbidden = TF_STACK | {"keras"} | {f"tfmot_discrete.{d}" for d in ("tfk", "keras3", "tools")}
    assert _offenders("core", forbidden) == {}


def test_only_tfk_and_tools_import_tf_keras_and_tfmot():
    """TF-MOT and tf_keras are the plugin's (`tfk`); the tools reach them through it."""
    for folder in ("core", "keras3", "tools"):
        assert _offenders(folder, {"tf_keras", "tensorflow_model_optimization"}) == {}, folder
    top = [p for p in sorted(PKG.glob("*.py"))]
    for path in top:
        assert not {
            n
            for n in _imports(path)
            if n.split(".")[0] in {"tf_keras", "tensorflow_model_optimization"}
        }, path.name


def test_keras3_never_imports_tfk_tensorflow_or_the_tools():
    """At module level: a Keras 3 user on JAX or PyTorch loads none of them
    (`test_jax_flow_never_imports_tensorflow` proves it at run time); nor,
    anywhere, the tfk plugin or the tools (which import the Keras 3 path)."""
    assert _offenders("keras3", TF_STACK, module_level_only=True) == {}
    assert _offenders("keras3", {"tfmot_discrete.tfk", "tfmot_discrete.tools"}) == {}


def test_only_the_api_and_the_tools_choose_a_path():
    """The dispatch on a model's Keras lives in `api.py` and `tools/`: neither
    path hands a model to the other, and neither imports the layers above it."""
    above = {"tfmot_discrete.api", "tfmot_discrete.tools"}
    assert _offenders("tfk", above | {"tfmot_discrete.keras3"}) == {}
    assert _offenders("keras3", above | {"tfmot_discrete.tfk"}) == {}


def test_no_private_module_is_imported_from_outside_its_folder():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): p.parent
        for pkg in ("tfmot_discrete", "tflite_export")
        for p in (ROOT / pkg).rglob("_*.py")
        if not p.name.startswith("__")
    }
    offenders = {}
    for folder in ("tfmot_discrete", "tflite_export", "tests", "examples", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in _imports(path):
                if name in modules and modules[name] != path.parent:
                    offenders.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert offenders == {}


def test_at_most_six_modules_at_the_package_top():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 6, top
    folders = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert folders == ["core", "keras3", "tfk", "tools"]


JAX_FLOW = '''
import importlib.abc
import os
import sys
import tempfile

HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization")
ours = []


class Blocker(importlib.abc.MetaPathFinder):
    """Stands in for a machine without TensorFlow: Keras 3 itself probes for it
    (`serialize_keras_object` checks `tf.available`) and takes the ImportError
    as "not installed"; an import from tfmot_discrete is recorded and fails."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in HEAVY:
            return None
        frame = sys._getframe(1)
        while frame is not None and (
            frame.f_code.co_filename.startswith("<frozen")
            or "importlib" in frame.f_code.co_filename
        ):
            frame = frame.f_back
        if frame is not None and "tfmot_discrete" in frame.f_code.co_filename:
            ours.append(f"{name} from {frame.f_code.co_filename}:{frame.f_lineno}")
        raise ImportError(f"{name} is blocked")


sys.meta_path.insert(0, Blocker())
import keras
import numpy as np

import tfmot_discrete as td

assert keras.backend.backend() == "jax", keras.backend.backend()
L = keras.layers
inp = keras.Input((6,))
x = L.Dense(8, name="d1")(inp)
x = L.BatchNormalization(name="bn")(x)
x = td.keras3.DiscreteMultiplier([1, -1], name="mult")(x)
out = L.Dense(3, name="out")(x)
qat = td.quantize_model(
    keras.Model(inp, out), {"d1": td.ternary(stochastic=True), "out": td.binary(scale="mean_abs")}
)
qat.compile("adam", "mse")
rng = np.random.default_rng(0)
xs = rng.normal(size=(16, 6)).astype("float32")
ys = rng.normal(size=(16, 3)).astype("float32")
monitor = td.CodebookMonitor(verbose=0)
qat.fit(xs, ys, epochs=1, batch_size=8, verbose=0, callbacks=[monitor, td.RecalibrateBatchNorm(xs)])
assert "d1/kernel/flip_rate" in monitor.measure(), monitor.measure()
td.recalibrate_batchnorm(qat, xs)
dist = td.Distiller(qat, teacher=keras.Model(inp, out))
assert isinstance(dist, td.Distiller)
dist.compile("adam", "mse")
history = dist.fit(xs, ys, epochs=1, batch_size=8, verbose=0)
assert "distillation_loss" in history.history, history.history
td.summary(qat, print_fn=lambda s: None)
labels = rng.integers(0, 3, size=16)
rows = td.sensitivity(keras.Model(inp, out), td.ternary(), (xs, labels), print_fn=None)
assert [r.layer for r in rows] == ["d1", "out"], rows
p = td.plan(keras.Model(inp, out), (xs, labels), candidates=[td.ternary(), "int8"], print_fn=None)
assert sorted(p.mapping) == ["d1", "out"], p.mapping
plain = td.strip_quantization(qat)
folder = tempfile.mkdtemp()
qat.save(os.path.join(folder, "qat.keras"))
plain.save(os.path.join(folder, "plain.keras"))
loaded = keras.saving.load_model(os.path.join(folder, "qat.keras"))
np.testing.assert_allclose(loaded.predict(xs, verbose=0), qat.predict(xs, verbose=0), atol=1e-6)
print("ours:", ours)
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
'''


def test_jax_flow_never_imports_tensorflow():
    """Quantize, train a step (with `td.CodebookMonitor` and
    `td.RecalibrateBatchNorm`), recalibrate, distill, summarize, scan and
    plan, strip, save and reload a Keras 3 model on JAX: TensorFlow, tf_keras
    and TF-MOT never load."""
    env = {**__import__("os").environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", JAX_FLOW],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours: []" in result.stdout, result.stdout
    assert "loaded: []" in result.stdout, result.stdout


LIGHT_IMPORT = """
import sys
import tfmot_discrete as td
heavy = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras")
print("after import:", sorted(m for m in heavy if m in sys.modules))
q = td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs")
assert td.CodebookQuantizer.from_config(q.get_config()) == q and td.ternary() != td.binary()
print("after quantizers:", sorted(m for m in heavy if m in sys.modules))
import tensorflow_model_optimization as tfmot
td.keras  # the TF-MOT side loads on first use
assert isinstance(q, tfmot.quantization.keras.quantizers.Quantizer)
print("quantizer is a TF-MOT Quantizer")
"""


def test_import_is_light_and_tf_names_load_on_first_use():
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_IMPORT], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "after import: []" in result.stdout
    assert "after quantizers: []" in result.stdout
    assert "quantizer is a TF-MOT Quantizer" in result.stdout
