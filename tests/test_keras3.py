"""A Keras 3 model is rebuilt in tf_keras, or refused with a useful message."""

import keras as keras3
import numpy as np
import pytest

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete._keras import from_keras3  # the bridge itself is under test


def _functional3():
    inp = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras3.layers.BatchNormalization(name="bn")(x)
    x = keras3.layers.ReLU()(x)
    a = keras3.layers.DepthwiseConv2D(3, padding="same")(x)
    b = keras3.layers.SeparableConv2D(4, 3, padding="same")(x)
    x = keras3.layers.Add()([a, b])
    x = keras3.layers.GlobalAveragePooling2D()(x)
    x = keras3.layers.Dropout(0.1)(x)
    out = keras3.layers.Dense(3, activation="softmax", name="dense")(x)
    return keras3.Model(inp, out, name="k3")


def test_functional_keras3_model_is_rebuilt_with_identical_weights():
    m3 = _functional3()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    m2 = from_keras3(m3)
    assert isinstance(m2, keras.Model)
    assert [layer.name for layer in m2.layers] == [layer.name for layer in m3.layers]
    np.testing.assert_allclose(m2(x).numpy(), m3(x).numpy(), atol=1e-6)


def test_sequential_keras3_model_quantizes():
    m3 = keras3.Sequential(
        [keras3.Input((5,)), keras3.layers.Dense(4, name="a"), keras3.layers.Dense(2, name="b")]
    )
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    np.testing.assert_allclose(from_keras3(m3)(x).numpy(), m3(x).numpy(), atol=1e-6)
    qat = td.quantize_model(m3, td.binary())
    assert [layer.name for layer in qat.layers] == ["quant_a", "quant_b"]
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((4, 2), "float32"), verbose=0)


def test_unbridgeable_layer_is_named_and_legacy_keras_explained():
    class LearnableMultiplier(keras3.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1],))

        def call(self, x):
            return x * self.kernel

    m3 = keras3.Sequential(
        [keras3.Input((5,)), LearnableMultiplier(name="mult"), keras3.layers.Dense(2)]
    )
    with pytest.raises(ValueError) as err:
        td.quantize_model(m3, td.binary())
    msg = str(err.value)
    assert "'mult'" in msg and "LearnableMultiplier" in msg and "TF_USE_LEGACY_KERAS=1" in msg
    assert "can only either be a keras Sequential or Functional" not in msg


def test_keras3_only_setting_is_refused():
    m3 = keras3.Sequential([keras3.Input((5,)), keras3.layers.Dense(4, name="a")])
    m3.layers[0].enable_lora(2)
    with pytest.raises(ValueError, match="'a'.*lora_rank=2.*TF_USE_LEGACY_KERAS=1"):
        td.quantize_model(m3, td.binary())
