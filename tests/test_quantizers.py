import numpy as np
import pytest
import tensorflow as tf
from conftest import QUANTIZERS

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import ops, quantizers
from tfmot_discrete.tfk.quantizers import LOG_SCALE_STEP
from tfmot_discrete.tfk.weights import wrapper_weights


def _wrapped_dense(quantizer, units=6, inputs=5):
    """A built QAT model with one Dense layer quantized by `quantizer`."""
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name="dense")])
    return td.quantize_model(model, quantizer)


def _quantize(wrapper, training=False):
    weight, q, qvars = wrapper_weights(wrapper)[0]
    return weight, q, qvars, q(weight, training, weights=qvars)


def test_serialization_round_trip(quantizer):
    cfg = quantizer.get_config()
    again = type(quantizer).from_config(cfg)
    assert again == quantizer
    assert again.get_config() == cfg
    ser = keras.saving.serialize_keras_object(quantizer)
    with td.quantize_scope():
        back = keras.saving.deserialize_keras_object(ser)
    assert back == quantizer


def test_outputs_are_codebook_values_times_channel_scale(quantizer):
    qat = _wrapped_dense(quantizer)
    wrapper = qat.layers[0]
    weight, q, qvars, out = _quantize(wrapper)
    out = out.numpy()
    scale = q.quantized_scale(weight, qvars)
    assert scale.shape == (1, 6)
    codes = out / scale
    np.testing.assert_allclose(codes, q.codebook.project_numpy(codes), rtol=1e-6, atol=1e-6)
    # Training-mode output too (stochastic rounding included).
    _, _, _, train_out = _quantize(wrapper, training=True)
    codes = train_out.numpy() / scale
    np.testing.assert_allclose(codes, q.codebook.project_numpy(codes), rtol=1e-6, atol=1e-6)


def test_build_makes_expected_weights(quantizer):
    qat = _wrapped_dense(quantizer)
    wrapper = qat.layers[0]
    _, _, qvars, _ = _quantize(wrapper)
    qvars = dict(qvars)
    if quantizer.learn_values:
        values = qvars.pop("values")
        assert values.shape == (quantizer.codebook.size,) and values.trainable
        np.testing.assert_array_equal(values.numpy(), quantizer.initial_values())
    if quantizer.scale == "learned":
        assert sorted(qvars) == ["log_scale", "scale_initialized"]
        assert qvars["log_scale"].shape == (1, 6) and qvars["log_scale"].trainable
        assert not qvars["scale_initialized"].trainable
    else:
        assert qvars == {}


def _numpy_reference_grad(q, w, scale):
    """d sum(out * g) / d w for the quantizer's straight-through rule."""
    lo, hi = q.codebook.low, q.codebook.high
    # A learned scale s multiplies the "mean_abs" projection s_w * c by s / s_w.
    factor = 1.0
    if q.scale == "learned":
        factor = scale / ops.mean_abs_scale(tf.constant(w), [1]).numpy()
    if q.gradient == "ste":
        return np.ones_like(w) * factor
    return ((w >= lo) & (w <= hi)).astype(w.dtype) * factor


def test_gradient_matches_numpy_reference(quantizer):
    qat = _wrapped_dense(quantizer)
    weight, q, qvars, _ = _quantize(qat.layers[0])
    rng = np.random.default_rng(0)
    w0 = rng.uniform(-2.5, 2.5, size=weight.shape).astype("float32")
    weight.assign(w0)  # partly outside the codebook range on purpose
    g = rng.normal(size=weight.shape).astype("float32")
    with tf.GradientTape() as tape:
        out = q(weight, True, weights=qvars)
        loss = tf.reduce_sum(out * g)
    grad = tape.gradient(loss, weight).numpy()
    scale = q.quantized_scale(weight, qvars)
    expected = g * _numpy_reference_grad(q, w0, scale)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    if q.gradient == "clipped_ste":
        assert (grad == 0).any() and (grad != 0).any()


def test_learned_scale_gradient_is_exact():
    """out = s * c(w), with c(w) the codebook value "mean_abs" picks: d out / d s = c(w)."""
    q = td.CodebookQuantizer([-1, 0, 1], scale="learned")
    qat = _wrapped_dense(q, units=3, inputs=4)
    weight, q, qvars, _ = _quantize(qat.layers[0])
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=weight.shape).astype("float32")
    weight.assign(w0)
    s0 = np.array([[0.5, 1.0, 2.0]], "float32")
    qvars["log_scale"].assign(np.log(s0) / LOG_SCALE_STEP)
    g = rng.normal(size=weight.shape).astype("float32")
    with tf.GradientTape() as tape:
        out = q(weight, True, weights=qvars)
        loss = tf.reduce_sum(out * g)
    dv = tape.gradient(loss, qvars["log_scale"]).numpy()
    sigma = ops.mean_abs_scale(tf.constant(w0), [1]).numpy()
    codes = q.codebook.project_numpy(w0 / sigma)
    np.testing.assert_allclose(out.numpy(), codes * s0, rtol=1e-6)
    # d/dv of s = exp(v * LOG_SCALE_STEP) is s * LOG_SCALE_STEP.
    expected = (codes * g).sum(axis=0, keepdims=True) * s0 * LOG_SCALE_STEP
    np.testing.assert_allclose(dv, expected, rtol=1e-5, atol=1e-6)


def test_learned_scale_initializes_from_weights():
    q = td.binary(scale="learned")
    qat = _wrapped_dense(q)
    weight, q, qvars, out = _quantize(qat.layers[0])
    expected = np.mean(np.abs(weight.numpy()), axis=0, keepdims=True)
    np.testing.assert_allclose(q.quantized_scale(weight, qvars), expected, rtol=1e-5)
    assert float(qvars["scale_initialized"].numpy()) == 1.0


@pytest.mark.parametrize("name", ["binary", "four_values", "ternary_mean_abs", "binary_learned"])
def test_latent_weights_are_kept_inside_the_codebook_range(name):
    q = QUANTIZERS[name]
    qat = _wrapped_dense(q)
    qat.compile(keras.optimizers.SGD(5.0), "mse")
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32") * 10
    y = np.random.default_rng(1).normal(size=(64, 6)).astype("float32") * 100
    qat.fit(x, y, epochs=2, verbose=0)
    weight, q, qvars, _ = _quantize(qat.layers[0])
    w = weight.numpy()
    bound = q.codebook.max_abs
    assert np.all(np.abs(w) <= bound + 1e-6)
    assert np.abs(w).max() > 0.5 * bound, "the update should have reached the clip"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"values": [-1, 1], "scale": "max"}, "Received: scale='max'"),
        ({"values": [-1, 1], "gradient": "sign"}, "Received: gradient='sign'"),
        ({"values": [-1, 1], "stochastic": "yes"}, "Received: stochastic='yes'"),
        ({"values": [-1, 1], "per_channel_axis": "last"}, "Received: per_channel_axis='last'"),
        ({"values": []}, "Received: values=[]"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        td.CodebookQuantizer(**kwargs)


def test_presets():
    assert td.binary().values.tolist() == [-1.0, 1.0]
    assert td.ternary().values.tolist() == [-1.0, 0.0, 1.0]
    assert td.ternary().scale == "mean_abs"
    assert td.power_of_two(bits=3).values.tolist() == [
        -1.0,
        -0.5,
        -0.25,
        -0.125,
        0.125,
        0.25,
        0.5,
        1.0,
    ]
    with pytest.raises(ValueError, match="Received: bits=1"):
        td.power_of_two(bits=1)


def test_get():
    assert quantizers.get(None) is None
    assert quantizers.get("binary") == td.binary()
    assert quantizers.get([1, -1]) == td.binary()
    assert quantizers.get(td.ternary().get_config()) == td.ternary()
    with pytest.raises(ValueError, match="Received: identifier=3.5"):
        quantizers.get(3.5)
    with pytest.raises(ValueError, match="Received: identifier='octal'"):
        quantizers.get("octal")


def test_stochastic_rounding_is_unbiased():
    x = tf.fill([200000], 0.25)
    out = td.binary(stochastic=True)(x, True, {}).numpy()
    assert set(np.unique(out)) == {-1.0, 1.0}
    assert abs(out.mean() - 0.25) < 0.01
    # Inference is deterministic.
    assert set(np.unique(td.binary(stochastic=True)(x, False, {}).numpy())) == {1.0}
