"""tf_keras: a user's own layer made of standard sub-layers goes on the codebook
(through a `DiscreteQuantizeConfig` that reads and writes the sub-layers'
kernels), trains, strips, saves and exports exact."""

import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tflite_export
import tfmot_discrete as td
from tfmot_discrete.tfk import keras
from tfmot_discrete.tfk.weights import QuantizationWarning, codebook_items

L = keras.layers


@keras.saving.register_keras_serializable(package="custom_layer_tests")
class Block(L.Layer):
    """`x + d2(d1(x))`, then two Dense layers held in a list and a Conv1D."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.d1 = L.Dense(units, activation="relu")
        self.d2 = L.Dense(units)
        self.stack = [L.Dense(units), L.Dense(units)]
        self.conv = L.Conv1D(units, 3, padding="same")

    def call(self, x):
        h = x + self.d2(self.d1(x))
        for d in self.stack:
            h = d(h)
        return h + self.conv(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="custom_layer_tests")
class Outer(L.Layer):
    """A block inside a block, and a kernel of its own (`add_weight`)."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = Block(units)

    def build(self, input_shape):
        self.own = self.add_weight("own", (input_shape[-1], self.units))
        super().build(input_shape)

    def call(self, x):
        return self.inner(x) @ self.own

    def get_config(self):
        return {**super().get_config(), "units": self.units}


BLOCK_WEIGHTS = ["d1/kernel", "d2/kernel", "stack/0/kernel", "stack/1/kernel", "conv/kernel"]


def _model(layer):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4))
    h = L.Flatten()(layer(inp))
    return keras.Model(inp, L.Dense(3, name="head")(h))


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 6, 4)).astype("float32"), rng.integers(0, 3, 64)


def _codes(qat):
    return {
        f"{i.layer}/{i.weight}": np.asarray(i.quantizer(i.latent, False, weights=i.qvars))
        for i in codebook_items(qat)
    }


def _quantize_strict(model, q):
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuantizationWarning)
        return td.quantize_model(model, q, strict=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The block model quantized ternary, its codes before training, trained."""
    model = _model(Block(name="block"))
    qat = _quantize_strict(model, td.ternary())
    before = _codes(qat)
    x, y = _data()
    qat.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model, qat, before, x, y


def test_every_sublayer_kernel_is_on_the_codebook_and_trains(trained):
    _, qat, before, _, _ = trained
    wrapper = qat.get_layer("quant_block")
    assert isinstance(wrapper, tfmot.quantization.keras.QuantizeWrapperV2)
    cfg = wrapper.quantize_config
    assert cfg.weight_names(wrapper.layer) == BLOCK_WEIGHTS
    assert list(cfg.weight_quantizers) == [w.replace("/", ".") for w in BLOCK_WEIGHTS]
    after = _codes(qat)
    assert sorted(after) == sorted([f"block/{w}" for w in BLOCK_WEIGHTS] + ["head/kernel"])
    for name, values in after.items():
        scale = np.abs(values).max(axis=tuple(range(values.ndim - 1)))
        units = values / np.where(scale > 0, scale, 1)
        assert set(np.unique(np.round(units, 5))) <= {-1.0, 0.0, 1.0}, name
    changed = [n for n in after if not np.array_equal(after[n], before[n])]
    assert set(changed) >= {f"block/{w}" for w in BLOCK_WEIGHTS}, changed


def test_strip_gives_the_qat_output_with_the_users_layer(trained):
    _, qat, _, x, _ = trained
    plain = td.strip_quantization(qat)
    assert type(plain.get_layer("block")) is Block
    np.testing.assert_allclose(plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)
    codes = _codes(qat)
    np.testing.assert_array_equal(
        plain.get_layer("block").d1.kernel.numpy(), codes["block/d1/kernel"]
    )
    np.testing.assert_array_equal(
        plain.get_layer("block").stack[1].kernel.numpy(), codes["block/stack/1/kernel"]
    )


def test_saves_reloads_and_resumes(trained, tmp_path):
    _, qat, _, x, y = trained
    path = str(tmp_path / "block.keras")
    qat.save(path)
    with td.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    before = _codes(loaded)
    loaded.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(True))
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = _codes(loaded)
    assert any(not np.array_equal(after[n], before[n]) for n in after)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_exports_exact(trained, fmt, tmp_path):
    _, qat, _, x, _ = trained
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format=fmt, representative_data=x[:16]
    )
    assert report.exact
    assert sorted(w.name for w in report.weights) == sorted(
        [f"block/{w}" for w in BLOCK_WEIGHTS] + ["head/kernel"]
    )


def test_mapping_keys_name_sublayer_weights():
    model = _model(Block(name="block"))
    qat = td.quantize_model(
        model,
        {
            "block/d1/kernel": td.binary(),
            "block/stack/.*": "int8",
            "block/.*": td.ternary(),
            "head": None,
        },
    )
    cfg = qat.get_layer("quant_block").quantize_config
    q = cfg.weight_quantizers
    assert q["d1.kernel"].codebook.size == 2 and q["conv.kernel"].codebook.size == 3
    assert type(q["stack.0.kernel"]).__name__ == "Int8WeightQuantizer"


def test_own_kernel_stays_float_with_a_notice_and_strict_refuses():
    model = _model(Outer(name="outer"))
    with pytest.warns(
        QuantizationWarning, match=r"'outer' \(Outer\): weight\(s\) \['own'\] stay float"
    ):
        qat = td.quantize_model(model, td.ternary())
    names = qat.get_layer("quant_outer").quantize_config.weight_names(
        qat.get_layer("quant_outer").layer
    )
    assert names == [f"inner/{w}" for w in BLOCK_WEIGHTS]
    with pytest.raises(
        ValueError,
        match=r"(?s)strict=True.*'outer' \(Outer\): weight\(s\) \['own'\].*DiscreteQuantizeConfig",
    ):
        td.quantize_model(model, td.ternary(), strict=True)
    # Naming the own kernel in a config of the layer quantizes it too.
    paths = {
        w.replace("/", "."): td.ternary() for w in ["own", *[f"inner/{b}" for b in BLOCK_WEIGHTS]]
    }
    qat = _quantize_strict(model, {"outer": td.DiscreteQuantizeConfig(paths), ".*": td.ternary()})
    x, _ = _data()
    np.testing.assert_allclose(
        td.strip_quantization(qat).predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5
    )


def test_tfmot_annotate_and_apply_reach_the_sublayers():
    model = _model(Block(name="block"))
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with td.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=td.DiscreteQuantizeScheme(td.ternary())
        )
    assert sorted(_codes(qat)) == sorted([f"block/{w}" for w in BLOCK_WEIGHTS] + ["head/kernel"])


def test_a_layer_keras_cannot_rebuild_is_refused_before_tfmot_clones_it():
    class Unregistered(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d = L.Dense(4)

        def call(self, x):
            return self.d(x)

        def get_config(self):
            return super().get_config()

    with pytest.raises(ValueError, match=r"'free' is of your class Unregistered.*register_keras"):
        td.quantize_model(_model(Unregistered(name="free")), td.ternary())

    @keras.saving.register_keras_serializable(package="custom_layer_tests")
    class Nameless(Unregistered):
        def get_config(self):
            return {}

    with pytest.raises(ValueError, match=r"'nameless' \(Nameless\): its `get_config\(\)` does not"):
        td.quantize_model(_model(Nameless(name="nameless")), td.ternary())
