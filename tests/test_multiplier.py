"""The question users ask: a learnable vector whose entries are only codebook values."""

import numpy as np
import pytest
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete_demo.digits import SignDense


def _recovery(values, seed=0, epochs=10):
    rng = np.random.default_rng(seed)
    hidden = rng.choice(values, 64).astype("float32")
    x = rng.normal(size=(2048, 64)).astype("float32")
    y = x * hidden
    inp = keras.Input((64,))
    layer = td.DiscreteMultiplier(values)
    model = keras.Model(inp, layer(inp))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return hidden, layer, model


@pytest.mark.parametrize("values", [[1, -1], [1, -1, 0.5, -0.5]], ids=["binary", "four"])
def test_recovers_every_hidden_entry_exactly(values):
    hidden, layer, model = _recovery(values)
    learned = layer.quantized_kernel().numpy()
    np.testing.assert_array_equal(learned, hidden)
    plain = td.strip_quantization(model)
    stored = plain.layers[1].get_weights()[0]
    np.testing.assert_array_equal(stored, hidden)
    assert set(np.unique(stored)) <= set(float(v) for v in values)


def test_binary_multiplier_is_never_zero():
    layer = td.DiscreteMultiplier([1, -1], kernel_initializer="zeros")
    out = layer(tf.ones((2, 5)))
    assert set(np.unique(layer.quantized_kernel().numpy())) == {1.0}
    assert set(np.unique(out.numpy())) == {1.0}


def test_multiplier_serializes():
    layer = td.DiscreteMultiplier(td.binary(scale="mean_abs"), name="m")
    again = td.DiscreteMultiplier.from_config(layer.get_config())
    assert again.quantizer == layer.quantizer and again.name == "m"


def test_multiplier_accepts_its_former_argument_name_and_old_configs():
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5])
    want = td.DiscreteMultiplier(q).quantizer
    assert td.DiscreteMultiplier(values=[1, -1, 0.5, -0.5]).quantizer == want
    assert td.DiscreteMultiplier(quantizer=q).quantizer == want
    # A config saved before the rename names the quantizer "values".
    old = td.DiscreteMultiplier(q, name="m").get_config()
    old["values"] = old.pop("quantizer")
    assert td.DiscreteMultiplier.from_config(old).quantizer == want
    with pytest.raises(ValueError, match="Received: quantizer=.*, values="):
        td.DiscreteMultiplier(q, values=[1, -1])
    with pytest.raises(ValueError, match="Received: quantizer=None"):
        td.DiscreteMultiplier()


def test_seed_answer_sign_does_not_learn():
    """`inputs * tf.math.sign(kernel)` gives a zero gradient: the kernel never moves."""
    inp = keras.Input((16,))
    layer = SignDense(4)
    model = keras.Model(inp, layer(inp))
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    y = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    grad = tape.gradient(loss, layer.kernel)
    assert grad is None or not np.any(grad.numpy())
    before = layer.kernel.numpy().copy()
    model.compile(keras.optimizers.Adam(0.1), "mse")
    model.fit(x, y, epochs=3, verbose=0)
    np.testing.assert_array_equal(layer.kernel.numpy(), before)


def test_seed_answer_gather_reaches_only_two_values():
    """`tf.gather(values, (sign + 1) / 2)` can only ever pick values[0] or values[1]."""
    values = tf.constant([1.0, -1.0, 0.5, -0.5])
    kernel = tf.random.normal([10000])
    picked = tf.gather(values, tf.cast((tf.math.sign(kernel) + 1) / 2, tf.int32))
    assert set(np.unique(picked.numpy())) <= {1.0, -1.0}
    ours = td.DiscreteMultiplier([1, -1, 0.5, -0.5])
    ours.build((None, 10000))
    ours.kernel.assign(kernel)
    assert set(np.unique(ours.quantized_kernel().numpy())) == {1.0, -1.0, 0.5, -0.5}
