"""The toolbox on Keras 3 models: `CodebookMonitor`, `Distiller`,
`sensitivity`, `recalibrate_batchnorm` / `RecalibrateBatchNorm` and
`plot_weights` on the TensorFlow, JAX and PyTorch backends (each in its own
process, `keras3_tools_worker.py`), and what stays tf_keras only."""

import json
import os
import pathlib
import subprocess
import sys

import keras as keras3
import numpy as np
import pytest

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete import quantize as tf_keras_path

WORKER = pathlib.Path(__file__).with_name("keras3_tools_worker.py")
BACKENDS = ("tensorflow", "jax", "torch")
CHECKS = {
    "monitor_shares_and_flips",
    "distiller_loss_and_frozen_teacher",
    "sensitivity_rows_are_single_layer_quantizations",
    "recalibrate_batchnorm_and_callback",
    "plot_weights_reads_the_keras3_weights",
}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The three backends' workers, started side by side: `{backend: (process, dir)}`."""
    runs = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(f"tools_{backend}")
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent.parent), env.get("PYTHONPATH", "")])
        with open(out / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(out)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        runs[backend] = (proc, out)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


def _model3():
    return keras3.Sequential(
        [keras3.Input((6,)), keras3.layers.Dense(8, name="a"), keras3.layers.Dense(3, name="b")]
    )


def test_keras3_model_is_not_rebuilt_silently_by_the_tf_keras_path(workers):
    # (`workers` first: the backends' processes run while the checks below do.)
    m3 = _model3()
    with pytest.raises(ValueError, match=r"Keras 3 model.*td\.to_tf_keras\(model\)"):
        tf_keras_path.quantize_model(m3, td.ternary())
    with pytest.raises(ValueError, match=r"td\.plan\(td\.to_tf_keras\(model\)"):
        td.plan(m3, (np.zeros((4, 6), "float32"), np.zeros(4)), print_fn=None)


def test_distiller_dispatches_on_the_models_keras():
    m3, m2 = _model3(), keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    dist = td.Distiller(td.quantize_model(m3, td.ternary()), teacher=m3)
    assert isinstance(dist, keras3.Model) and not isinstance(dist, td.Distiller)
    assert isinstance(td.Distiller(m2, m2), td.Distiller)  # tf_keras models: the tf_keras class
    with pytest.raises(ValueError, match=r"`student` must be a Keras 3 model.*tf_keras"):
        td.Distiller(m2, teacher=m3)
    with pytest.raises(ValueError, match=r"`alpha` must be a number >= 0.0 and <= 1.0"):
        td.Distiller(m3, teacher=m3, alpha=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_toolbox_on_backend(workers, backend):
    proc, out = workers[backend]
    rc = proc.wait(timeout=600)
    assert rc == 0, (out / "stderr.txt").read_text()[-4000:]
    report = json.loads((out / "checks.json").read_text())
    assert report["backend"] == backend
    assert set(report["passed"]) == CHECKS
