"""README.md and the pages of docs/: every Python block runs, every link resolves,
and the README's API index names every public name."""

import ast
import pathlib
import re

import pytest

import tflite_export
import tfmot_discrete as td

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The front page, then every page of docs/ (pages added later are included).
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _name(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _python_blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


BLOCKS = [(page, i, block) for page in PAGES for i, block in enumerate(_python_blocks(page))]


def test_pages_have_python_blocks():
    assert _python_blocks(README), "the README shows no runnable example"
    assert len({page for page, _, _ in BLOCKS}) >= 4
    assert len(BLOCKS) >= 14


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a block binds in its own namespace (not inside functions, classes,
    lambdas or comprehensions, and not `except ... as` names, which Python unbinds)."""
    names = set()
    scopes = (
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Lambda,
        ast.ListComp,
        ast.SetComp,
        ast.DictComp,
        ast.GeneratorExp,
    )

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                names.add(child.id)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in child.names)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
            if not isinstance(child, scopes):
                visit(child)

    visit(tree)
    return names


# Files a block names in a string literal that it writes (saves, exports, logs).
WRITTEN = re.compile(r"""["']([\w.-]+\.(?:keras|tflite|png|csv|cc))["']""")


@pytest.mark.parametrize(
    ("page", "index", "block"), BLOCKS, ids=[f"{_name(p)}:{i}" for p, i, _ in BLOCKS]
)
def test_block_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = f"{_name(page)} block {index}"
    tree = ast.parse(block, where)
    namespace = {"__name__": "readme"}
    exec(compile(tree, where, "exec"), namespace)
    # A block that stops early without an error (a `__main__` guard, an early
    # branch) leaves some of its names unbound.
    unbound = sorted(_bound_names(tree) - set(namespace))
    assert not unbound, f"{where} did not run to its end: {unbound} never bound"
    for name in WRITTEN.findall(block):
        assert (tmp_path / name).is_file(), f"{where} should have written {name}"


def _slug(heading: str) -> str:
    """The anchor a Markdown heading gets on GitHub."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_name(page)}: broken links {broken}"


def _api_index() -> dict[str, str]:
    """The README's API table: each name written in its first column -> the page it links to."""
    section = README.read_text().split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    index = {}
    for row in re.findall(r"^\| `.*$", section, flags=re.M):
        first, *_, link = row.split(" | ")
        page = LINK.search(link).group(1).split("#")[0]
        for name in re.findall(r"\b(td|tflite_export)\.(\w+)", first):
            index[".".join(name)] = page
    return index


def test_api_index_names_every_public_name():
    index = _api_index()
    public = [f"td.{n}" for n in td.__all__] + [f"tflite_export.{n}" for n in tflite_export.__all__]
    missing = [name for name in public if name not in index]
    assert not missing, f"README.md's API index has no line for {missing}"
    unknown = sorted(set(index) - set(public))
    assert not unknown, f"README.md's API index names what is not public: {unknown}"
    # Each line links to a page that speaks of the name.
    for name, page in index.items():
        short = name.split(".", 1)[1]
        assert short in (ROOT / page).read_text(), f"{page} never mentions {name}"
