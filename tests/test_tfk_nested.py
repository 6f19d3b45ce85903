"""tf_keras: a model nested in a `Sequential` (the transfer-learning shape) is
quantized, trains, strips and exports exact; subclassed models are refused
with the way out."""

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tfmot_discrete.tfk import keras
from tfmot_discrete.tfk.weights import codebook_items

L = keras.layers


def _base(name="base"):
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    return keras.Model(inp, L.GlobalAveragePooling2D(name="gap")(h), name=name)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)


def _transfer():
    keras.utils.set_random_seed(0)
    return keras.Sequential([_base(), L.Dense(3, name="out")])


def _nested_sequentials():
    """A Sequential inside a Sequential inside a Sequential, with an `Input`."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((8, 8, 1)), _base(), L.Dense(5, name="mid")], name="inner"
    )
    return keras.Sequential([inner, L.Dense(3, name="out")])


def _codes(qat):
    return {
        f"{i.layer}/{i.weight}": np.asarray(i.quantizer(i.latent, False, weights=i.qvars))
        for i in codebook_items(qat)
    }


@pytest.mark.parametrize("make", [_transfer, _nested_sequentials], ids=["transfer", "deep"])
def test_model_nested_in_a_sequential_quantizes_trains_strips_and_exports(make, tmp_path):
    model = make()
    x, y = _data()
    reference = model.predict(x, verbose=0)
    qat = td.quantize_model(model, td.ternary(), strict=True)
    before = _codes(qat)
    assert {"conv/kernel", "out/kernel"} <= set(before)
    # The float weights came along: nothing quantized computes the float model.
    float_flat = td.strip_quantization(td.quantize_model(model, {".*": None}))
    np.testing.assert_allclose(float_flat.predict(x, verbose=0), reference, atol=1e-5)
    qat.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    after = _codes(qat)
    assert all(not np.array_equal(after[n], before[n]) for n in after)
    plain = td.strip_quantization(qat)
    assert not any(isinstance(layer, keras.Model) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    report = tflite_export.export(qat, tmp_path / "m.tflite", format="int8")
    assert report.exact and len(report.weights) == len(after)


def test_frozen_base_stays_frozen():
    model = _transfer()
    model.get_layer("base").trainable = False
    qat = td.quantize_model(model, {"conv": None, ".*": td.ternary()})
    assert not qat.get_layer("conv").trainable and not qat.get_layer("bn").trainable
    assert qat.get_layer("quant_out").trainable


class _Sub(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(2)

    def call(self, x):
        return self.d(x)


def test_subclassed_models_are_refused_with_the_way_out():
    sub = _Sub(name="sub")
    sub(np.zeros((1, 3), "float32"))
    way_out = r"(?s)Functional API.*Keras 3.*subclassed"
    with pytest.raises(ValueError, match=r"'sub'\) is a subclassed model \(_Sub\).*" + way_out[4:]):
        td.quantize_model(sub, td.binary())
    x = np.zeros((8, 3), "float32")
    with pytest.raises(ValueError, match=way_out):
        td.plan(sub, (x, np.zeros(8)), print_fn=None)
    outer = keras.Sequential([keras.Input((3,)), _Sub(name="inside"), L.Dense(2)])
    with pytest.raises(ValueError, match=r"holds a subclassed model, 'inside', as a layer"):
        td.quantize_model(outer, td.binary())


def test_plan_counts_the_nested_models_layers():
    model = _transfer()
    x, y = _data()
    p = td.plan(model, (x[:32], y[:32]), candidates=[td.ternary()], print_fn=None)
    assert {r.layer: r.weights for r in p.rows} == {"conv": 36, "out": 12}
    qat = td.quantize_model(model, p.mapping, strict=True)
    assert sorted(_codes(qat)) == ["conv/kernel", "out/kernel"]
