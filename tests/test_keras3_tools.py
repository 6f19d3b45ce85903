"""The toolbox on Keras 3 models: `CodebookMonitor`, `Distiller`,
`sensitivity`, `plan`, `recalibrate_batchnorm` / `RecalibrateBatchNorm` and
`plot_weights` on the TensorFlow, JAX and PyTorch backends (each in its own
process, `keras3_tools_worker.py`), and the tf_keras path refusing Keras 3
models instead of rebuilding them."""

import pathlib
import re
import warnings

import keras as keras3
import keras3_models
import numpy as np
import pytest
from keras3_cases import passed_checks, run_workers

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.core.rules import QuantizationWarning
from tfmot_discrete.tfk import quantize as tf_keras_path
from tfmot_discrete.tools.plan import estimate_bytes

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
    """The three backends' workers, run side by side: `{backend: (rc, stderr, dir)}`."""
    return run_workers(WORKER, dict.fromkeys(BACKENDS, []), tmp_path_factory)


def _model3():
    return keras3.Sequential(
        [keras3.Input((6,)), keras3.layers.Dense(8, name="a"), keras3.layers.Dense(3, name="b")]
    )


def test_keras3_model_is_not_rebuilt_silently_by_the_tf_keras_path():
    with pytest.raises(ValueError, match=r"Keras 3 model.*td\.to_tf_keras\(model\)"):
        tf_keras_path.quantize_model(_model3(), td.ternary())


def test_plan_estimates_a_keras3_model_as_its_tf_keras_twin():
    """`td.plan`'s byte model reads Keras 3 layers as their tf_keras twins (which
    `tflite_export` converts); its losses are checked on every backend by the workers."""
    inp = keras3.Input((8, 8, 2))
    h = keras3.layers.Conv2D(16, 3, name="conv")(inp)
    h = keras3.layers.BatchNormalization(name="bn")(h)
    h = keras3.layers.ReLU()(h)
    h = keras3.layers.SeparableConv2D(16, 3, name="sep")(h)
    h = keras3.layers.GlobalAveragePooling2D()(h)
    m3 = keras3.Model(inp, keras3.layers.Dense(3, name="logits")(h))
    twin = td.to_tf_keras(m3)
    # (file, arena) bytes the tf_keras path estimated before Keras 3 models
    # were planned, for the tf_keras twin of this model.
    for choices, want in (
        ({"conv": (None, False), "sep": (None, False), "logits": (None, False)}, (5540, 3290)),
        ({"conv": (3, True), "sep": (2, True), "logits": (None, False)}, (3793, 4138)),
        ({"conv": (2, False), "sep": (4, True), "logits": (2, True)}, (4020, 4138)),
    ):
        for model in (m3, twin):
            est = estimate_bytes(model, choices)
            assert (est.flash_bytes, est.ram_bytes) == want, (model.name, choices)


def test_distiller_dispatches_on_the_models_keras():
    m3, m2 = _model3(), keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    dist = td.Distiller(td.quantize_model(m3, td.ternary()), teacher=m3)
    assert isinstance(dist, keras3.Model) and isinstance(dist, td.Distiller)
    assert type(dist).__module__ == "tfmot_discrete.keras3.distill"
    d2 = td.Distiller(m2, m2)  # tf_keras models: the tf_keras class
    assert isinstance(d2, td.Distiller) and isinstance(d2, keras.Model)
    assert type(d2).__module__ == "tfmot_discrete.tfk.distill"
    assert not isinstance(m3, td.Distiller) and not isinstance(m2, td.Distiller)
    with pytest.raises(TypeError, match=r"subclass that class instead.*tfk\.distill"):
        type("MyDistiller", (td.Distiller,), {})
    with pytest.raises(ValueError, match=r"`student` must be a Keras 3 model.*tf_keras"):
        td.Distiller(m2, teacher=m3)
    with pytest.raises(ValueError, match=r"`alpha` must be a number >= 0.0 and <= 1.0"):
        td.Distiller(m3, teacher=m3, alpha=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_toolbox_on_backend(workers, backend):
    assert passed_checks(workers, backend) == CHECKS


class BlockNet(keras3.Model):
    """A subclassed model: a user's block of two Dense layers, then a head."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = keras3_models.Block(6, name="block")
        self.head = keras3.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.block(x))


def test_sensitivity_and_plan_reach_the_layers_inside_a_users_block():
    """Each Dense anywhere in the layer tree is one row, named by its path; the
    row's number is that layer's projection alone; the plan's mapping keys
    name the same layers for `quantize_model`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48)
    model = BlockNet(name="block_net")
    model(x[:1])
    q = td.binary(scale="mean_abs")
    rows = td.sensitivity(model, q, (x, y), print_fn=None)
    assert [r.layer for r in rows] == ["block/d1", "block/d2", "head"]
    assert [r.weights for r in rows] == [36, 36, 18]
    for r in rows:
        with warnings.catch_warnings():  # the other layers stay float, on purpose
            warnings.simplefilter("ignore", QuantizationWarning)
            single = td.strip_quantization(td.quantize_model(model, {re.escape(r.layer): q}))
        projected = np.mean(np.argmax(single.predict(x, verbose=0), -1) == y)
        assert r.quantized == pytest.approx(projected, abs=1e-9), r.layer
    plan = td.plan(model, (x, y), candidates=[q, "int8"], print_fn=None)
    assert [p.layer for p in plan.rows] == ["block/d1", "block/d2", "head"]
    assert sorted(plan.mapping) == [re.escape("block/d1"), re.escape("block/d2"), "head"]
    qat = td.quantize_model(model, plan.mapping, strict=True)  # every kernel on its choice
    assert len(td.keras3.quantize.codebook_weights(qat)) == sum(
        p.choice != "int8" for p in plan.rows
    )
