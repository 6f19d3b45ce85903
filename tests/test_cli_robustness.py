"""The `tflite-export` command: quiet unless asked, and safe on untrusted files."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tfmot_discrete._keras import keras

L = keras.layers
#: absl's log line format, as TensorFlow's C++ code writes it at start-up.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


def _cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "tflite_export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(4, name="d")])
    path = tmp_path_factory.mktemp("cli") / "small.tflite"
    tflite_export.export(td.quantize_model(model, td.ternary()), path, format="int8")
    return path


def test_library_log_lines_only_with_verbose(small_file):
    quiet = _cli("verify", str(small_file), "--codebook", "-1,0,1")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.strip().splitlines()[-1] == "OK"
    assert not ABSL_LINE.search(quiet.stdout)
    loud = _cli("verify", str(small_file), "--codebook", "-1,0,1", "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert ABSL_LINE.search(loud.stderr), loud.stderr[:2000]
    assert loud.stdout == quiet.stdout


def test_own_errors_still_reach_stderr_without_verbose(tmp_path):
    res = _cli("verify", str(tmp_path / "missing.tflite"), "--codebook", "1,-1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"tflite-export: error: File not found. Received: {str(tmp_path / 'missing.tflite')!r}"
    ]
    assert res.stdout == ""


# --- untrusted files ------------------------------------------------------------

#: 32-bit words that, written over a field of a valid file, made LiteRT's
#: interpreter crash (SIGSEGV, SIGABRT) in a systematic search.
CRASHY_WORDS = (0xFFFFFFFF, 0x7FFFFFFF, 0x00010000, 0x00000100)
MUTANTS_PER_FORMAT = 36

_DRIVER = """
import contextlib, io, json, sys
from tflite_export import __main__ as cli
codebook, files = sys.argv[1], sys.argv[2:]
for f in files:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["verify", f, "--codebook", codebook])
        except SystemExit as e:
            rc = e.code
        except BaseException as e:
            rc = f"{type(e).__name__}: {e}"
    print(json.dumps({"file": f, "rc": rc, "err": err.getvalue()}), flush=True)
"""


def _mutants(data: bytes, rng, n: int) -> list[tuple[str, bytes]]:
    """Seeded mutations of a valid file: fields overwritten, bytes flipped,
    truncations, random bytes behind a valid identifier."""
    base = np.frombuffer(data, np.uint8)
    out = []
    for i in range(n):
        d = base.copy()
        kind = ("word", "flip", "truncate", "random")[i % 4]
        if kind == "word":
            p = int(rng.integers(0, d.size // 4)) * 4
            d[p : p + 4] = np.frombuffer(np.uint32(rng.choice(CRASHY_WORDS)).tobytes(), np.uint8)
        elif kind == "flip":
            idx = rng.integers(0, d.size, size=int(rng.integers(1, 8)))
            d[idx] = rng.integers(0, 256, size=idx.size)
        elif kind == "truncate":
            d = d[: int(rng.integers(0, d.size))]
        else:
            d = rng.integers(0, 256, size=int(rng.integers(8, 4096))).astype(np.uint8)
            d[4:8] = np.frombuffer(b"TFL3", np.uint8)
        out.append((kind, d.tobytes()))
    return out


@pytest.fixture(scope="module")
def format_files(tmp_path_factory):
    """One valid file of every export format (small Conv/Depthwise/Dense model)."""
    from tflite_export.formats import FORMATS  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    out = L.Dense(3, name="d")(L.Flatten()(x))
    qat = td.quantize_model(keras.Model(inp, out), td.ternary())
    rep = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    root = tmp_path_factory.mktemp("formats")
    files = {}
    for fmt in FORMATS:
        files[fmt] = root / f"{fmt}.tflite"
        tflite_export.export(qat, files[fmt], format=fmt, representative_data=rep)
    return files


def test_verify_survives_mutated_truncated_and_random_files(format_files, tmp_path):
    rng = np.random.default_rng(2026)
    cases = {}
    for fmt, path in format_files.items():
        for i, (kind, data) in enumerate(_mutants(path.read_bytes(), rng, MUTANTS_PER_FORMAT)):
            f = tmp_path / f"{fmt}_{kind}_{i:02d}.tflite"
            f.write_bytes(data)
            cases[f] = kind
    (tmp_path / "empty.tflite").write_bytes(b"")
    (tmp_path / "noise.tflite").write_bytes(rng.integers(0, 256, 5000).astype(np.uint8).tobytes())
    cases[tmp_path / "empty.tflite"] = "truncate"
    cases[tmp_path / "noise.tflite"] = "random"
    res = subprocess.run(
        [sys.executable, "-c", _DRIVER, "-1,0,1", *map(str, cases)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0 and len(results) == len(cases), (
        f"the verifying process died (status {res.returncode}) after {len(results)} of "
        f"{len(cases)} files; next: {list(cases)[len(results)] if len(results) < len(cases) else '-'}"
    )
    counts = {}
    for r in results:
        kind = cases[pathlib.Path(r["file"])]
        counts[(kind, r["rc"])] = counts.get((kind, r["rc"]), 0) + 1
        assert r["rc"] in (0, 1, 2), r
        assert "Traceback" not in r["err"], r
        if kind in ("truncate", "random"):
            assert r["rc"] == 2, r
        if r["rc"] == 2:
            lines = r["err"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tflite-export: error:"), r
            assert r["file"] in lines[0]
    print("fuzz outcomes (kind, exit status): count", sorted(counts.items()))
    assert sum(n for (kind, rc), n in counts.items() if rc == 2) >= len(cases) // 2
