"""tflite_export's modules form layers: no import circle, function-level imports
included; the bottom reads files, the top is the flow and the command line."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tflite_export"

#: Bottom to top: a module imports only modules of earlier layers.
LAYERS = [
    {"errors", "formats", "logs", "progress", "agreement"},
    {"files", "compat", "schema", "reading", "sequence"},
    {"micro", "exact", "isolation", "resolver"},
    {"runners", "packed", "keras3", "project_files", "biases"},
    {"inputs", "convert", "budget", "project"},
    {"verify", "native", "tfbackend"},
    {"report"},
    {"lattice"},
    {"pipeline", "child"},
    {"__main__", "tfbackend_child"},
]


def _imports(path: pathlib.Path) -> set[str]:
    """The package's modules that `path` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "tflite_export":
                out |= {a.name for a in node.names}
            elif node.module.startswith("tflite_export."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tflite_export.")}
    return out


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {m: _imports(PACKAGE / f"{m}.py") & modules - {m} for m in modules}


def test_every_module_has_a_layer():
    assert set(_graph()) == set().union(*LAYERS)


def test_modules_import_only_lower_layers():
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    wrong = {m: sorted(d for d in deps if layer[d] >= layer[m]) for m, deps in _graph().items()}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_no_import_circle():
    graph = _graph()
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return None
        if state.get(m) == "open":
            return [*path, m]
        state[m] = "open"
        for d in sorted(graph[m]):
            cycle = visit(d, [*path, m])
            if cycle:
                return cycle
        state[m] = "done"
        return None

    assert [c for m in sorted(graph) if (c := visit(m, []))] == []


def test_tflite_header_is_checked_in_one_module():
    holders = sorted(p.stem for p in PACKAGE.glob("*.py") if 'b"TFL3"' in p.read_text())
    assert holders == ["reading"]
