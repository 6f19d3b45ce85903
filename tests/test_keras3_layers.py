"""Keras 3 models with recurrent, Bidirectional, attention, EinsumDense,
TimeDistributed and ConvLSTM layers and a model used as a layer: on the
codebook on the TensorFlow, JAX and PyTorch backends (each in its own process,
run side by side), as on the tf_keras path; exported exactly."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("keras3_layers_worker.py")
#: Each backend's worker flags: the summary (a tf_keras rebuild of the whole
#: layer model) on PyTorch, the export on TensorFlow, so that the three
#: processes take about as long.
BACKENDS = {"tensorflow": ["--export"], "torch": ["--summary"], "jax": []}
CHECKS = {
    "float_notice_and_strict",
    "layer_types_wrap",
    "layer_types_train_strip_save",
    "gru_parity_with_tf_keras",
}
FLAG_CHECKS = {"--summary": "summary", "--export": "export_gru_attention_int8_int4_exact"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The three backends' workers, run side by side: `{backend: (rc, stderr, dir)}`."""
    runs = {}
    for backend, flags in BACKENDS.items():
        out = tmp_path_factory.mktemp(backend)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent.parent), env.get("PYTHONPATH", "")])
        err = open(out / "stderr.txt", "w")
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(out), *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        runs[backend] = (proc, err, out)
    done = {}
    for backend, (proc, err, out) in runs.items():
        rc = proc.wait(timeout=600)
        err.close()
        done[backend] = (rc, (out / "stderr.txt").read_text(), out)
    return done


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_layer_types_train_strip_save_and_match_tf_keras_on_backend(workers, backend):
    rc, stderr, out = workers[backend]
    assert rc == 0, stderr[-4000:]
    report = json.loads((out / "checks.json").read_text())
    assert report["backend"] == backend
    want = CHECKS | {FLAG_CHECKS[f] for f in BACKENDS[backend]}
    assert set(report["passed"]) == want
