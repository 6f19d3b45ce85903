"""The toolbox on Keras 3 models: `CodebookMonitor`, `Distiller`,
`sensitivity`, `plan`, `recalibrate_batchnorm` / `RecalibrateBatchNorm` and
`plot_weights` on the TensorFlow, JAX and PyTorch backends (each in its own
process, `keras3_tools_worker.py`), and the tf_keras path refusing Keras 3
models instead of rebuilding them."""

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
    "sensitivity_and_plan_rows_are_single_layer_quantizations",
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
    with pytest.raises(ValueError, match=r"Keras 3 model.*td\.to_tf_keras\(model\)"):
        tf_keras_path.quantize_model(_model3(), td.ternary())


def test_plan_of_a_keras3_model_is_its_tf_keras_twins_plan():
    inp = keras3.Input((8, 8, 2))
    h = keras3.layers.Conv2D(6, 3, name="conv")(inp)
    h = keras3.layers.BatchNormalization(name="bn")(h)
    h = keras3.layers.ReLU()(h)
    h = keras3.layers.SeparableConv2D(8, 3, name="sep")(h)
    h = keras3.layers.GlobalAveragePooling2D()(h)
    m3 = keras3.Model(inp, keras3.layers.Dense(3, name="logits")(h))
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(32, 8, 8, 2)).astype("float32"), rng.integers(0, 3, 32))
    kwargs = {
        "candidates": [td.ternary(), td.binary(scale="mean_abs")],
        "metric": keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
        "print_fn": None,
    }
    plan3 = td.plan(m3, data, **kwargs)
    plan2 = td.plan(td.to_tf_keras(m3), data, **kwargs)
    assert plan3.mapping == plan2.mapping and plan3.export_kwargs == plan2.export_kwargs
    assert (plan3.flash_bytes, plan3.ram_bytes) == (plan2.flash_bytes, plan2.ram_bytes)
    assert plan3.loss == pytest.approx(plan2.loss, abs=1e-5) and plan3.loss != 0
    for r3, r2 in zip(plan3.rows, plan2.rows, strict=True):
        assert (r3.layer, r3.choice, r3.packed, r3.flash_bytes) == (
            r2.layer,
            r2.choice,
            r2.packed,
            r2.flash_bytes,
        )
        assert r3.loss == pytest.approx(r2.loss, abs=1e-5)
    assert isinstance(td.quantize_model(m3, plan3.mapping), keras3.Model)


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
