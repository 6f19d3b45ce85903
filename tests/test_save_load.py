"""QAT models save and load in every format, and training resumes."""

import numpy as np
import pytest
from conftest import QUANTIZERS

import tfmot_discrete as td
from tfmot_discrete import keras

L = keras.layers


def _qat(q):
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    x = L.Dense(8, name="dense")(x)
    x = td.DiscreteMultiplier([1, -1, 0.5, -0.5], name="mult")(x)
    out = L.Dense(3, name="out")(x)
    return td.quantize_model(keras.Model(inp, out), q)


def _by_name(layer):
    return {w.name.split(":")[0].split("/")[-1]: w.numpy() for w in layer.weights}


#: The learned scale (extra variables) in every format; the other quantizers in one each.
ROUND_TRIPS = [
    ("four_values_learned", ".keras"),
    ("four_values_learned", ".h5"),
    ("four_values_learned", "savedmodel"),
    ("binary_mean_abs", ".h5"),
    ("ternary_none", ".keras"),
]


@pytest.mark.parametrize(("qname", "fmt"), ROUND_TRIPS)
def test_save_load_round_trip_and_resume(tmp_path, fmt, qname):
    qat = _qat(QUANTIZERS[qname])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    qat.compile(keras.optimizers.Adam(0.01), "mse")
    qat.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / ("model" + (fmt if fmt != "savedmodel" else "")))
    qat.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
    with td.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    for layer in qat.layers:
        other = loaded.get_layer(layer.name)
        got = _by_name(other)
        assert got.keys() == _by_name(layer).keys()
        for key, value in _by_name(layer).items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{layer.name}/{key}")
    # Training resumes from the loaded model.
    before = loaded.predict(x, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    assert not np.allclose(loaded.predict(x, verbose=0), before)
    if fmt != "savedmodel":
        # With the optimizer state: the same as never having stopped. (tf_keras
        # does not restore optimizer state from a SavedModel, even for a plain
        # model; there training goes on with a fresh optimizer.)
        assert loaded.optimizer.iterations.numpy() == qat.optimizer.iterations.numpy() + 4
        qat.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0), qat.predict(x, verbose=0), rtol=1e-4, atol=1e-4
        )
    plain = td.strip_quantization(loaded)
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
