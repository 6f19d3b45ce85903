"""Keras 3 models with two inputs export like the tf_keras path's: the file's
input `i` is the model's input `i`, every supported format verified exact, and
the command line takes the saved `.keras` file (TensorFlow backend, in process)."""

import keras as keras3
import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import inputs, runners

pytestmark = pytest.mark.skipif(
    keras3.backend.backend() != "tensorflow",
    reason="in-process Keras 3 export tests run on the TensorFlow backend",
)
L = keras3.layers


def _trained(model, mapping, x):
    """`td.quantize_model` of `model`, trained two steps with Keras 3's own `fit`."""
    keras3.utils.set_random_seed(0)
    qat = td.quantize_model(model, mapping)
    assert isinstance(qat, keras3.Model)
    qat.compile(keras3.optimizers.Adam(0.01), "mse", run_eagerly=True)  # two steps: no tracing
    y = np.asarray(qat(x)) + 0.1
    qat.fit(x, y, batch_size=len(x[0]) // 2, epochs=1, verbose=0)
    return qat


@pytest.fixture(scope="module")
def image_tokens():
    """An image and a token sequence (int32), each through its own quantized branch."""
    keras3.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    image = keras3.Input((8, 8, 3), name="image")
    tokens = keras3.Input((10,), dtype="int32", name="tokens")
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(image))
    t = L.GlobalAveragePooling1D()(L.Embedding(20, 8, name="emb")(tokens))
    out = L.Dense(3, name="dense")(L.Concatenate()([x, t]))
    model = keras3.Model([image, tokens], out)
    x = [rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 20, (16, 10))]
    x[1] = x[1].astype("int32")
    mapping = {
        "conv": td.ternary(),
        "emb": td.ternary(),
        "dense": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
    }
    return _trained(model, mapping, x), x


@pytest.fixture(scope="module")
def two_vectors():
    """Two float inputs of the same shape, each through its own layer: swapped
    inputs would run without an error and give other outputs. The names sort
    the other way round from the model's order."""
    keras3.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    first = keras3.Input((6,), name="b_first")
    second = keras3.Input((6,), name="a_second")
    h = L.Concatenate()([L.Dense(5, name="d1")(first), L.Dense(5, name="d2")(second)])
    model = keras3.Model([first, second], L.Dense(3, name="out")(L.ReLU()(h)))
    x = [rng.normal(size=(64, 6)).astype("float32"), 3.0 * rng.normal(size=(64, 6))]
    x[1] = x[1].astype("float32")
    mapping = {"d1": td.ternary(), "d2": td.binary(scale="mean_abs"), "out": "int8"}
    return _trained(model, mapping, x), x


def _lite(data: bytes, x):
    return runners.run_litert(data, x)[0]


@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
def test_image_and_tokens_export_exact(image_tokens, fmt, tmp_path):
    qat, x = image_tokens
    path = tmp_path / f"m_{fmt}.tflite"
    report = tflite_export.export(qat, path, format=fmt, representative_data=x)
    assert report.ok and report.exact, report
    data = path.read_bytes()
    shapes = [tuple(d["shape"][1:]) for d in runners.interpreter(data).get_input_details()]
    assert shapes == [(8, 8, 3), (10,)]  # the model's order
    np.testing.assert_allclose(_lite(data, x), np.asarray(qat(x)), atol=1e-4)


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_two_inputs_of_one_shape_are_not_swapped(two_vectors, fmt, tmp_path):
    qat, x = two_vectors
    path = tmp_path / f"v_{fmt}.tflite"
    report = tflite_export.export(qat, path, format=fmt, representative_data=x)
    assert report.ok and report.exact, report
    data = path.read_bytes()
    want = np.asarray(qat(x))
    if fmt == "tflm_packed":  # LiteRT cannot run it: TFLM does
        got = runners.run_tflm(data, x, dequantize=True)[0]
    else:
        got = _lite(data, x)
    swapped = np.asarray(qat(x[::-1]))
    span = float(want.max() - want.min())
    # full_int8 rounds activations to 8 bits (a few steps of 1/255 of the
    # range); swapped inputs miss by a quarter of the range and more.
    tol = 0.02 * span
    assert np.abs(got - want).max() <= tol
    assert np.abs(swapped - want).max() > 0.25 * span


def test_cli_exports_a_saved_two_input_file(image_tokens, tmp_path):
    qat, x = image_tokens
    saved = tmp_path / "two_inputs.keras"
    qat.save(saved)
    out = tmp_path / "cli.tflite"
    assert cli.main([str(saved), "-o", str(out), "--format", "int4"]) == 0
    np.testing.assert_allclose(_lite(out.read_bytes(), x), np.asarray(qat(x)), atol=1e-4)


def test_random_ids_fit_every_vocabulary_of_two_token_inputs(tmp_path):
    words, tags = keras3.Input((4,), dtype="int32", name="words"), keras3.Input((4,), dtype="int32")
    flat = [L.Flatten()(L.Embedding(50, 2, name="e50")(words))]
    flat.append(L.Flatten()(L.Embedding(3, 2, name="e3")(tags)))
    model = keras3.Model([words, tags], L.Dense(2, name="d")(L.Concatenate()(flat)))
    qat = td.quantize_model(model, {"e50": td.ternary(), "e3": td.ternary(), "d": td.binary()})
    # No sample inputs: the export draws ids, which must index the 3-row table too.
    report = tflite_export.export(qat, tmp_path / "ids.tflite", format="int8")
    assert report.ok and report.exact, report
    x = inputs.random_inputs(td.strip_quantization(td.to_tf_keras(qat)))  # what `export` runs
    assert [int(a.max()) for a in x] == [2, 2]
