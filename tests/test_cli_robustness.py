"""The `tflite-export` command: quiet unless asked, and safe on untrusted files."""

import os
import re
import subprocess
import sys

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
