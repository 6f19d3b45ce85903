"""The requirements resolve from the public package index alone."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return reqs


def test_requirements_are_read():
    reqs = _requirements()
    assert any(r.startswith("torch") for r in reqs)
    assert any(r.startswith("tensorflow==") for r in reqs)


def test_no_requirement_pins_a_local_version_label():
    """`+cpu` and the like: the public index serves no local-version wheels, so
    such a pin fails the install before anything is installed."""
    local = [r for r in _requirements() if re.search(r"[=<>!~]=?\s*[\w.*]+\+\w", r)]
    assert local == []


def test_the_local_label_check_catches_the_old_pin():
    assert re.search(r"[=<>!~]=?\s*[\w.*]+\+\w", "torch==2.13.0+cpu")
    assert not re.search(r"[=<>!~]=?\s*[\w.*]+\+\w", "torch>=2.13,<2.14")
