"""Every Python code block of README.md runs."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


# Files a block names in a string literal that it writes (saves, exports, logs).
WRITTEN = re.compile(r"""["']([\w.-]+\.(?:keras|tflite|png|csv|cc))["']""")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = BLOCKS[index]
    namespace = {"__name__": "readme"}
    exec(
        compile(block + "\n__block_done__ = True\n", f"README.md block {index}", "exec"), namespace
    )
    assert namespace["__block_done__"], "the block did not run to its end"
    for name in WRITTEN.findall(block):
        assert (tmp_path / name).is_file(), f"block {index} should have written {name}"
