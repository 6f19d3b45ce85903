"""Non-finite latent weights and bad codebook scales never pass silently."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import ops
from tfmot_discrete.tfk.weights import wrapper_weights

L = keras.layers


def _dense3(q):
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="dense")])
    return td.quantize_model(model, q)


def _latent(qat, name="quant_dense"):
    weight, quantizer, qvars = wrapper_weights(qat.get_layer(name))[0]
    return weight, quantizer, qvars


def _poison(variable, index, value=np.nan):
    a = variable.numpy()
    a[index] = value
    variable.assign(a)


@pytest.mark.parametrize(
    "values", [[-1.0, 1.0], [-1.0, 0.0, 1.0], np.linspace(-1, 1, 16)], ids=["k2", "k3", "k16"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_projection_of_a_non_finite_entry_is_nan(values, bad):
    x = tf.constant([0.3, bad, -0.7, 0.0], tf.float32)
    out = ops.project(x, np.asarray(values)).numpy()
    assert np.isnan(out).all()
    finite = ops.project(tf.constant([0.3, -0.7], tf.float32), np.asarray(values)).numpy()
    assert np.isfinite(finite).all()


def test_huge_finite_weights_whose_sum_overflows_are_not_flagged():
    x = tf.constant([3e38, 3e38, -3e38, -3e38, 1.0], tf.float32)
    assert bool(ops.all_finite(x))
    assert ops.project(x, [-1.0, 1.0]).numpy().tolist() == [1.0, 1.0, -1.0, -1.0, 1.0]


def test_issue_reproduction_nan_latent_refused_everywhere(tmp_path):
    qat = _dense3(td.binary(scale="mean_abs"))
    weight, quantizer, qvars = _latent(qat)
    _poison(weight, (2, 1))
    # The forward pass shows it: the outputs are NaN (so is the loss).
    assert np.isnan(qat(np.ones((2, 4), np.float32)).numpy()).all()
    scale = quantizer.quantized_scale(weight, qvars)
    assert np.isnan(scale[0, 1]) and np.isfinite(scale[0, [0, 2]]).all()
    for call in (td.strip_quantization, lambda m: td.summary(m, print_fn=None)):
        with pytest.raises(ValueError, match=r"Layer 'dense', weight 'kernel': 1 latent") as e:
            call(qat)
        assert "index (2, 1)" in str(e.value)
    target = tmp_path / "m.tflite"
    with pytest.raises(tflite_export.ExportError, match=r"'dense', weight 'kernel'"):
        tflite_export.export(qat, target, format="int8")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


class _CountBatches(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.mark.parametrize(
    "q",
    [
        td.binary(),
        td.binary(scale="mean_abs"),
        td.ternary(),
        td.CodebookQuantizer([1, -1, 0.5, -0.5]),
        td.binary(scale="learned"),
        td.CodebookQuantizer(np.linspace(-1, 1, 16)),
        td.binary(stochastic=True),
    ],
    ids=["binary", "binary_mean_abs", "ternary", "four", "learned", "k16", "stochastic"],
)
def test_terminate_on_nan_stops_training_on_a_nan_latent_weight(q):
    qat = _dense3(q)
    _poison(_latent(qat)[0], (0, 0))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 3))
    qat.compile(keras.optimizers.SGD(0.01), "mse")
    counter = _CountBatches()
    hist = qat.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), counter],
    )
    assert counter.batches == 1  # of 24
    assert math.isnan(hist.history["loss"][0])


@pytest.mark.parametrize(
    "log_scale, what",
    [(-1e4, "0.0"), (1e4, "inf"), (np.nan, "nan")],
    ids=["zero", "inf", "nan"],
)
def test_bad_learned_scale_is_refused(log_scale, what, tmp_path):
    qat = _dense3(td.binary(scale="learned"))
    _, _, qvars = _latent(qat)
    _poison(qvars["log_scale"], (0, 2), log_scale)
    for call in (td.strip_quantization, lambda m: td.summary(m, print_fn=None)):
        with pytest.raises(ValueError, match="learned codebook scale of 1 channel") as e:
            call(qat)
        assert f"first {what} at index (0, 2)" in str(e.value)
        assert "Layer 'dense', weight 'kernel'" in str(e.value)
    target = tmp_path / "m.tflite"
    with pytest.raises(tflite_export.ExportError, match="zero, negative or non-finite"):
        tflite_export.export(qat, target, format="int4")
    assert not target.exists()


def test_negative_scale_and_nan_bias_are_refused():
    # A learned scale is exp(log scale) > 0; a negative one can only come
    # from a hand-made quantizer state, which check_finite refuses too.
    qat = _dense3(td.binary(scale="learned"))
    weight, quantizer, qvars = _latent(qat)
    original = quantizer.quantized_scale
    quantizer.quantized_scale = lambda w, v: -original(w, v)
    try:
        with pytest.raises(ValueError, match=r"zero, negative or non-finite \(first -"):
            td.strip_quantization(qat)
    finally:
        del quantizer.quantized_scale
    bias = [w for w in qat.get_layer("quant_dense").weights if "bias" in w.name][0]
    _poison(bias, (1,), np.inf)
    with pytest.raises(ValueError, match=r"weight 'bias': 1 value\(s\) are NaN or inf"):
        td.strip_quantization(qat)
