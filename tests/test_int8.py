"""`"int8"` in the quantizer mapping: 8-bit layers next to codebook layers."""

import functools

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import exact, verify
from tflite_export.schema import storage_name
from tfmot_discrete import keras
from tfmot_discrete.tfk import int8
from tfmot_discrete.tfk.weights import int8_items, wrapper_weights

L = keras.layers
MAPPING = {"conv_0": "int8", "logits": "int8", ".*": td.ternary()}


def _model():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, name="conv_0")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(5, 3, name="conv_1")(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4, name="logits")(x), name="mixed")


@functools.cache
def _trained(activations=None):
    """Trained once per module (the tests only read it)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=64)
    qat = td.quantize_model(_model(), MAPPING, activations=activations)
    qat.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return qat, x


def _wrapper(qat, name):
    return next(
        layer
        for layer in qat.layers
        if getattr(layer, "layer", None) is not None and layer.layer.name == name
    )


def test_mapping_trains_8bit_layers_and_strip_bakes_their_grid():
    qat, x = _trained()
    kinds = {
        label: type(q).__name__
        for layer in qat.layers
        for label, q in [(f"{layer.layer.name}", q) for _, q, _ in wrapper_weights(layer)]
    }
    assert kinds == {
        "conv_0": "Int8WeightQuantizer",
        "conv_1": "CodebookQuantizer",
        "logits": "Int8WeightQuantizer",
    }
    plain = td.strip_quantization(qat)
    np.testing.assert_allclose(plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    for name in ("conv_0", "logits"):
        wrapper = _wrapper(qat, name)
        latent, q, qvars = wrapper_weights(wrapper)[0]
        baked = plain.get_layer(name).kernel.numpy().astype(np.float64)
        # One step per output channel: max |w_c| of the last training step / 127.
        step = np.maximum(np.abs(qvars["min_var"].numpy()), np.abs(qvars["max_var"].numpy())) / 127
        assert step.shape == (baked.shape[-1],)
        codes = baked / step
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert np.abs(np.round(codes)).max() == 127
        # The latent weight stays float: rounding it to the grid is what was baked.
        assert np.abs(latent.numpy() - baked).max() > 0
        np.testing.assert_allclose(
            np.clip(latent.numpy() / step, -127, 127).round(), np.round(codes)
        )


def test_fresh_model_computes_with_8bit_weights_from_its_own_range():
    model = _model()
    qat = td.quantize_model(model, MAPPING)
    plain = td.strip_quantization(qat)
    w = model.get_layer("logits").kernel.numpy()
    step = np.abs(w).max(axis=0) / 127
    np.testing.assert_allclose(
        plain.get_layer("logits").kernel.numpy(), np.round(w / step) * step, rtol=1e-5, atol=1e-7
    )


def test_every_layer_int8_and_bad_values():
    qat = td.quantize_model(_model(), "int8")
    assert len(int8_items(qat)) == 3
    with pytest.raises(ValueError, match="Received: identifier='int9'"):
        td.quantize_model(_model(), {"conv_0": "int9"})


@pytest.mark.parametrize(
    ("fmt", "activations"),
    [("float", None), ("int8", None), ("int4", None), ("full_int8", None), ("full_int8", "int8")],
)
def test_every_format_stores_the_trained_int8_values(fmt, activations, tmp_path):
    qat, x = _trained(activations)
    report = tflite_export.export(qat, tmp_path / "m.tflite", format=fmt, representative_data=x)
    assert report.ok and report.exact, str(report)
    by_name = {w.name: w for w in report.weights}
    assert sorted(by_name) == ["conv_0/kernel", "conv_1/kernel", "logits/kernel"]
    assert [by_name[n].trained_int8 for n in sorted(by_name)] == [True, False, True]
    text = str(report)
    assert text.count("int8 (trained)") == 2
    # Independently of the report: the logits kernel (no BatchNorm folded into
    # it) is stored as the trained integers times the trained steps.
    data = (tmp_path / "m.tflite").read_bytes()
    fb = exact.read(data)
    latent, q, qvars = wrapper_weights(_wrapper(qat, "logits"))[0]
    iv = int8.int8_values(q, latent, qvars)
    want_codes, want_steps = iv.codes.T, iv.steps.T  # TFLite stores (out, in)
    hits = []
    for _, t in exact.weight_tensors(fb):
        tensor = fb.subgraphs[0].tensors[t]
        if tuple(tensor.shape) != want_codes.shape:
            continue
        got = exact.dequantize(fb, tensor)
        if np.abs(got - iv.values.T).max() < 1e-6 * np.abs(iv.values).max():
            hits.append(tensor)
    assert len(hits) == 1
    tensor = hits[0]
    if fmt == "float":
        assert storage_name(tensor) == "float32"
    else:
        assert storage_name(tensor) == "int8"  # int4 files included
        raw = exact.dequantize(fb, tensor) / np.asarray(tensor.quantization.scale)[:, None]
        np.testing.assert_allclose(raw, want_codes, atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(tensor.quantization.scale), want_steps[:, 0], rtol=1e-6
        )
    if fmt == "int4":
        checks = verify.check_codebook_file(data, td.Codebook([-1, 0, 1]))
        assert sum(c.storage == "int4" for c in checks) == 1  # conv_1, the codebook layer


def test_summary_lists_8bit_layers_at_8_bits():
    qat, _ = _trained()
    text = td.summary(qat, print_fn=None)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if "/kernel" in line}
    assert rows["conv_0/kernel"][1:3] == ["int8", "per-channel"]
    assert rows["conv_0/kernel"][4] == "8"
    assert rows["logits/kernel"][1:5] == ["int8", "per-channel", "320", "8"]
    assert rows["logits/kernel"][-1] == "-"
    assert "conv_1/kernel" in rows and rows["conv_1/kernel"][1] == "{-1,"


def test_save_and_load_in_quantize_scope(tmp_path):
    qat, x = _trained()
    path = str(tmp_path / "mixed.keras")
    qat.save(path)
    with td.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert [item.label for item in int8_items(loaded)] == ["conv_0/kernel", "logits/kernel"]
    loaded.fit(x, np.zeros(len(x)), epochs=1, batch_size=32, verbose=0)
