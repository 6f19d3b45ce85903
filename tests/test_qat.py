"""One QAT step + strip exactness for every supported layer type, mappings,
and the TF-MOT API path."""

import re

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from conftest import QUANTIZERS

import tfmot_discrete as td
from tfmot_discrete import keras

L = keras.layers

# name -> (input shape, layer factory, quantized weight attributes, channel axes)
LAYERS = {
    "Dense": ((6,), lambda: L.Dense(4), ["kernel"]),
    "Conv1D": ((9, 3), lambda: L.Conv1D(4, 3), ["kernel"]),
    "Conv2D": ((7, 7, 3), lambda: L.Conv2D(4, 3), ["kernel"]),
    "Conv3D": ((5, 5, 5, 2), lambda: L.Conv3D(3, 2), ["kernel"]),
    "DepthwiseConv2D": (
        (7, 7, 3),
        lambda: L.DepthwiseConv2D(3, depth_multiplier=2),
        ["depthwise_kernel"],
    ),
    "SeparableConv1D": (
        (9, 3),
        lambda: L.SeparableConv1D(4, 3),
        ["depthwise_kernel", "pointwise_kernel"],
    ),
    "SeparableConv2D": (
        (7, 7, 3),
        lambda: L.SeparableConv2D(4, 3),
        ["depthwise_kernel", "pointwise_kernel"],
    ),
    "Conv1DTranspose": ((6, 3), lambda: L.Conv1DTranspose(4, 3), ["kernel"]),
    "Conv2DTranspose": ((5, 5, 3), lambda: L.Conv2DTranspose(4, 3), ["kernel"]),
    "Embedding": ((5,), lambda: L.Embedding(20, 4), ["embeddings"]),
}

EXPECTED_AXES = {
    "kernel": None,
    "depthwise_kernel": (-2, -1),
    "pointwise_kernel": (-1,),
    "embeddings": (0,),
}


def _model(name):
    shape, factory, _ = LAYERS[name]
    inp = keras.Input(shape, dtype="int32" if name == "Embedding" else "float32")
    x = factory()(inp)
    x = L.Flatten()(x)
    out = L.Dense(2, name="head")(x)
    return keras.Model(inp, out)


def _data(name, n=16):
    shape = LAYERS[name][0]
    rng = np.random.default_rng(0)
    if name == "Embedding":
        return rng.integers(0, 20, size=(n, *shape)).astype("int32")
    return rng.normal(size=(n, *shape)).astype("float32")


def _channel_axes(layer_name, attr, rank):
    if attr == "kernel":
        return (rank - 2,) if "Transpose" in layer_name else (rank - 1,)
    return tuple(a % rank for a in EXPECTED_AXES[attr])


def _assert_codebook_times_channel_scale(w, codebook, axes):
    """Every channel of `w` is `codebook value x one positive number`."""
    w = np.asarray(w, np.float64)
    other = tuple(a for a in range(w.ndim) if a not in axes)
    moved = np.moveaxis(w, list(axes), list(range(len(axes))))
    flat = moved.reshape(int(np.prod([w.shape[a] for a in axes])), -1)
    cb = np.asarray(codebook, np.float64)
    for row in flat:
        nz = row[row != 0]
        if nz.size == 0:
            assert 0.0 in cb
            continue
        # Find a scale that maps the row onto the codebook.
        ok = False
        for c in cb[cb != 0]:
            s = nz[0] / c
            if s <= 0:
                continue
            codes = row / s
            if np.allclose(codes, cb[np.abs(codes[:, None] - cb[None]).argmin(1)], atol=1e-5):
                ok = True
                break
        assert ok, f"channel {row} is not codebook x scale for {cb}"
    del other


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("qname", ["binary", "four_values", "ternary_mean_abs", "binary_learned"])
def test_qat_step_and_strip_is_exact(layer_name, qname):
    q = QUANTIZERS[qname]
    model = _model(layer_name)
    qat = td.quantize_model(model, {".*": q} if layer_name != "Embedding" else q)
    x = _data(layer_name)
    y = np.random.default_rng(1).normal(size=(len(x), 2)).astype("float32")
    qat.compile(keras.optimizers.Adam(0.01), "mse")
    before = [w.numpy().copy() for w in qat.trainable_weights]
    qat.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = [w.numpy() for w in qat.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "nothing trained"

    plain = td.strip_quantization(qat)
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in model.layers]
    assert [layer.name for layer in plain.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), qat.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    layer = plain.layers[1]
    for attr in LAYERS[layer_name][2]:
        w = getattr(layer, attr).numpy()
        axes = _channel_axes(layer_name, attr, w.ndim)
        if q.scale is None:
            assert np.isin(w, q.values).all()
        else:
            _assert_codebook_times_channel_scale(w, q.values, axes)
    # The head is quantized too (every supported layer).
    _assert_codebook_times_channel_scale(plain.get_layer("head").kernel.numpy(), q.values, (1,))


def test_biases_batchnorm_and_unlisted_layers_stay_float():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, name="dense")(x)
    model = keras.Model(inp, out)
    qat = td.quantize_model(model, td.binary())
    names = [layer.name for layer in qat.layers]
    assert names[1:] == ["quant_conv", "bn", "relu", "pool", "flat", "quant_dense"]
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((8, 3), "float32"), verbose=0)
    plain = td.strip_quantization(qat)
    assert not np.isin(plain.get_layer("conv").bias.numpy(), [-1, 1]).all()
    assert not np.isin(plain.get_layer("bn").gamma.numpy(), [-1, 1]).all()
    assert np.isin(plain.get_layer("conv").kernel.numpy(), [-1, 1]).all()


def test_mapping_per_layer_codebooks():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(5, name="dense_a"),
            L.Dense(5, name="conv_like"),
            L.Dense(2, name="out"),
        ]
    )
    qat = td.quantize_model(model, {"dense_.*": td.binary(), "conv.*": td.ternary(), "out": None})
    plain = td.strip_quantization(qat)
    assert np.isin(plain.get_layer("dense_a").kernel.numpy(), [-1, 1]).all()
    k = plain.get_layer("conv_like").kernel.numpy()
    assert len(np.unique(np.abs(k[k != 0]) / 1.0)) <= 5  # per-channel scale
    assert not np.isin(plain.get_layer("out").kernel.numpy(), [-1, 1]).all()
    assert [layer.name for layer in qat.layers] == ["quant_dense_a", "quant_conv_like", "out"]


def test_mapping_regex_that_matches_nothing_is_refused():
    model = keras.Sequential([keras.Input((6,)), L.Dense(2, name="dense")])
    with pytest.raises(ValueError, match=r"'conv\.\*' matches no layer.*\['dense'\]"):
        td.quantize_model(model, {"conv.*": td.binary()})


def test_non_quantizable_layer_named_explicitly_is_refused():
    model = keras.Sequential([keras.Input((4, 6)), L.LSTM(3, name="lstm"), L.Dense(2)])
    with pytest.raises(ValueError) as err:
        td.quantize_model(model, {"lstm": td.binary()})
    msg = str(err.value)
    assert "'lstm'" in msg and "LSTM" in msg and "DiscreteQuantizeConfig" in msg


def test_custom_layer_through_an_explicit_config():
    class Scaled(L.Dense):
        pass

    model = keras.Sequential([keras.Input((6,)), Scaled(3, name="scaled")])
    cfg = td.DiscreteQuantizeConfig({"kernel": td.binary()})
    with td.quantize_scope({"Scaled": Scaled}):
        qat = td.quantize_model(model, {"scaled": cfg})
        plain = td.strip_quantization(qat)
    assert np.isin(plain.layers[0].kernel.numpy(), [-1, 1]).all()


def test_tfmot_api_path_without_input_fake_quant():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.AveragePooling2D()(x)
    x = L.Flatten()(x)
    out = L.Dense(3, name="dense")(x)
    model = keras.Model(inp, out)
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with td.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=td.DiscreteQuantizeScheme(td.ternary())
        )
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert "QuantizeLayer" not in kinds
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((4, 3), "float32"), verbose=0)
    plain = td.strip_quantization(qat)
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), qat.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    _assert_codebook_times_channel_scale(plain.get_layer("conv").kernel.numpy(), [-1, 0, 1], (3,))


def test_quantize_annotate_layer_path():
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    model = keras.Sequential(
        [
            keras.Input((6,)),
            annotate(L.Dense(4, name="a")),
            L.Dense(2, name="b"),
        ]
    )
    with td.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(
            model, scheme=td.DiscreteQuantizeScheme(td.binary())
        )
    assert [type(layer).__name__ for layer in qat.layers] == ["QuantizeWrapperV2", "Dense"]


def test_subclassed_and_unbuilt_models_are_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        td.quantize_model(sub, td.binary())
    with pytest.raises(ValueError, match="not built"):
        td.quantize_model(keras.Sequential([L.Dense(2)]), td.binary())
    with pytest.raises(ValueError, match="Received: model of type"):
        td.quantize_model("model.keras", td.binary())


def test_quantizer_argument_is_validated():
    model = keras.Sequential([keras.Input((6,)), L.Dense(2)])
    with pytest.raises(ValueError, match="Received: quantizer=None"):
        td.quantize_model(model, None)
    with pytest.raises(ValueError, match=re.escape("Received: identifier=3")):
        td.quantize_model(model, 3)
