"""The `tflite-export` command: quiet unless asked, and safe on untrusted files."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras

L = keras.layers
#: absl's log line format, as TensorFlow's C++ code writes it at start-up.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(4, name="d")])
    path = tmp_path_factory.mktemp("cli") / "small.tflite"
    tflite_export.export(td.quantize_model(model, td.ternary()), path, format="int8")
    return path


def test_library_log_lines_only_with_verbose(small_file):
    quiet = run_cli("verify", str(small_file), "--codebook", "-1,0,1")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.strip().splitlines()[-1] == "OK"
    assert not ABSL_LINE.search(quiet.stdout)
    loud = run_cli("verify", str(small_file), "--codebook", "-1,0,1", "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert ABSL_LINE.search(loud.stderr), loud.stderr[:2000]
    assert loud.stdout == quiet.stdout


def test_own_errors_still_reach_stderr_without_verbose(tmp_path):
    res = run_cli("verify", str(tmp_path / "missing.tflite"), "--codebook", "1,-1")
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
    crashes = sum("crashed (SIG" in r["err"] for r in results)
    print("fuzz outcomes (kind, exit status): count", sorted(counts.items()))
    print(f"{len(results)} files, {crashes} crashed the interpreter's child process")
    assert sum(n for (kind, rc), n in counts.items() if rc == 2) >= len(cases) // 2


# --- interpreters that end the process ----------------------------------------


def test_a_tiny_softmax_input_step_gives_a_clear_error_not_a_dead_process(tmp_path):
    """TFLM's int8 softmax aborts the process when its input step is tiny, as
    for an untrained network whose logits span 2e-6 (an untrained MobileNetV2,
    alpha 0.35, 32 x 32, fails the same way in 60x the time)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    tiny = keras.initializers.RandomNormal(stddev=1e-7)
    x = keras.layers.Dense(10, name="logits", kernel_initializer=tiny)(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    qat = td.quantize_model(model, {"conv": td.ternary(), "logits": "int8"})
    rep = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    target = tmp_path / "tiny_softmax.tflite"
    with pytest.raises(tflite_export.ExportError) as e:
        tflite_export.export(qat, target, format="full_int8", representative_data=rep)
    message = str(e.value)
    assert "TFLM check of the full_int8 file failed; nothing written" in message
    assert "SOFTMAX input" in message and "2^-26" in message
    assert not target.exists()


def test_an_interpreter_crash_is_an_error_and_the_next_file_still_runs(format_files):
    from tflite_export import runners  # noqa: PLC0415

    good = format_files["full_int8"].read_bytes()
    x = [np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)]
    before = runners.run_tflm(good, x)[0]
    # A field of the file overwritten: TFLM has no flatbuffer verifier and
    # dies on such files (the child does, with a signal).
    bad = None
    crashed = 0
    for p in range(64, len(good) - 4, 4):
        probe = bytearray(good)
        probe[p : p + 4] = (0x7FFFFFFF).to_bytes(4, "little")
        try:
            runners.run_tflm(bytes(probe), x)
        except tflite_export.ExportError as err:
            if "crashed (SIG" in str(err):
                crashed += 1
                bad = probe
                break
    assert crashed == 1, "no field overwrite crashed TFLM"
    with pytest.raises(tflite_export.ExportError, match=r"The TFLM interpreter crashed \(SIG"):
        runners.run_tflm(bytes(bad), x)
    np.testing.assert_array_equal(runners.run_tflm(good, x)[0], before)
