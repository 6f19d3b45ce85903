"""LSTM and GRU trained with 8-bit states (`activations="int8"`), and their files.

`quantize_model(..., activations="int8")` makes an `LSTM` or `GRU` an
`Int8LSTM` / `Int8GRU` (`tfk.recurrent`): unrolled, every tensor its
full-integer file quantizes fake-quantized on a range of its own, tracked in
training. The export converts them from those ranges.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import biases, pipeline, runners
from tfmot_discrete.tfk import keras, recurrent

L = keras.layers
STEPS, FEATURES, UNITS, CLASSES = 6, 3, 8, 4


def _model(kind, **options):
    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES), name="signal")
    x = L.Conv1D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = getattr(L, kind)(UNITS, name="rnn", **options)(x)
    return keras.Model(inp, L.Dense(CLASSES, name="logits")(x))


def _data(n=128, seed=0):
    """Inputs whose class is the step of the largest first feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, STEPS, FEATURES)).astype("float32")
    y = np.argmax(x[:, :CLASSES, 0], axis=1)
    return x, y


@functools.cache
def _trained(kind):
    """A ternary QAT model (first and last layer at 8 bits) with 8-bit
    activations, fitted 3 epochs (one per kind in this module: do not change it)."""
    qat = td.quantize_model(
        _model(kind),
        {"conv": "int8", "logits": "int8", ".*": td.ternary()},
        activations="int8",
    )
    x, y = _data()
    qat.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    qat.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    return qat


def _inner(qat, name="rnn"):
    return qat.get_layer(f"quant_{name}").layer


@pytest.fixture(scope="module", params=["LSTM", "GRU"])
def trained(request):
    return request.param, _trained(request.param)


def test_activations_int8_swaps_in_the_8_bit_state_layer_with_no_range_after_it():
    model = _model("GRU")
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    assert type(_inner(qat)) is recurrent.Int8GRU
    assert type(model.get_layer("rnn")) is L.GRU  # the model passed in is unchanged
    latent = {w.name.split("/")[-1]: w.numpy() for w in qat.get_layer("quant_rnn").weights}
    np.testing.assert_array_equal(latent["kernel:0"], model.get_layer("rnn").cell.kernel.numpy())
    # Its output is its 8-bit hidden state: a second range would round it twice.
    for name, ranges in (("rnn", 0), ("conv", 1), ("logits", 1)):
        wrapper = qat.get_layer(f"quant_{name}")
        assert len(wrapper.quantize_config.get_output_quantizers(wrapper.layer)) == ranges
    # Weight-only QAT keeps the plain layer.
    assert type(_inner(td.quantize_model(model, td.ternary()))) is L.GRU


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"dropout": 0.2}, "dropout in the cell"),
        ({"activation": "relu"}, "activation is not tanh"),
        ({"reset_after": False}, "reset_after=False"),
    ],
)
def test_forms_the_8_bit_state_does_not_take_stay_plain(options, why):
    kind = "GRU" if "reset_after" in options else "LSTM"
    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES))
    out = getattr(L, kind)(UNITS, name="rnn", **options)(inp)
    model = keras.Model(inp, L.Dense(CLASSES, name="logits")(out))
    assert recurrent.why_float_state(model.get_layer("rnn")) == why
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    assert type(_inner(qat)) is getattr(L, kind)


def test_a_masked_input_keeps_a_float_state():
    inp = keras.Input((STEPS, FEATURES))
    x = L.Masking(0.0, name="masking")(inp)
    model = keras.Model(inp, L.Dense(CLASSES, name="logits")(L.LSTM(UNITS, name="rnn")(x)))
    assert recurrent.why_float_state(model.get_layer("rnn")) == "its input carries a mask"
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    assert type(_inner(qat)) is L.LSTM


def test_a_free_length_or_a_layer_never_called_keeps_a_float_state():
    inp = keras.Input((None, FEATURES))
    lstm = L.LSTM(UNITS, name="rnn")
    keras.Model(inp, lstm(inp))
    assert recurrent.why_float_state(lstm) == "no fixed number of time steps"
    # A Bidirectional's template layer is never called itself.
    bi = L.Bidirectional(L.LSTM(UNITS))
    bi(keras.Input((STEPS, FEATURES)))
    assert recurrent.why_float_state(bi.layer) == "no fixed number of time steps"


def test_training_tracks_one_range_per_tensor(trained):
    kind, qat = trained
    inner = _inner(qat)
    assert type(inner) is {"LSTM": recurrent.Int8LSTM, "GRU": recurrent.Int8GRU}[kind]
    ranges = inner.activation_ranges.numpy()
    assert int(inner.range_batches.numpy()) == 3 * 4  # 3 epochs of 4 batches
    assert ranges.shape == (len(inner.POINTS), 2)
    assert np.all(ranges[:, 0] <= 0) and np.all(ranges[:, 1] >= 0)
    assert not np.any(ranges == recurrent.INITIAL_RANGE)  # every range was set by data
    h = ranges[inner.POINTS.index("h")]
    assert -1 <= h[0] and h[1] <= 1  # o * tanh(c) or a mix of tanh and the state


def test_inference_computes_on_the_hidden_state_grid(trained):
    kind, qat = trained
    inner = _inner(qat)
    lo, hi = inner.activation_ranges.numpy()[inner.POINTS.index("h")]
    sub = keras.Model(qat.input, qat.get_layer("quant_rnn").output)
    h = sub.predict(_data(16, seed=1)[0], verbose=0).astype(np.float64)
    step = (hi - lo) / 255
    codes = (h - h.min()) / step  # offsets from one grid point are whole steps
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert len(np.unique(np.round(codes))) > 10


def test_strip_quantization_gives_the_plain_layer_with_the_trained_weights(trained):
    kind, qat = trained
    plain = td.strip_quantization(qat)
    layer = plain.get_layer("rnn")
    assert type(layer) is getattr(L, kind)
    assert [w.name.split("/")[-1] for w in layer.weights] == [
        "kernel:0",
        "recurrent_kernel:0",
        "bias:0",
    ]
    codes = np.unique(np.round(layer.get_weights()[0] / np.abs(layer.get_weights()[0]).max(0), 6))
    assert set(codes) <= {-1.0, 0.0, 1.0}  # ternary times a channel scale
    np.testing.assert_array_equal(layer.get_weights()[2], _inner(qat).cell.bias.numpy())


def test_save_and_load_keep_the_ranges_and_outputs(trained, tmp_path):
    kind, qat = trained
    qat.save(tmp_path / "m.keras")
    with td.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(_inner(loaded)) is type(_inner(qat))
    np.testing.assert_array_equal(
        _inner(loaded).activation_ranges.numpy(), _inner(qat).activation_ranges.numpy()
    )
    x = _data(16, seed=2)[0]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), qat.predict(x, verbose=0), rtol=0, atol=1e-6
    )


def _file_scales(data: bytes) -> np.ndarray:
    it = runners.interpreter(data)
    return np.array(
        [
            d["quantization"][0]
            for d in it.get_tensor_details()
            if d["dtype"] == np.int8 and d["quantization"][0] > 0
        ]
    )


def test_export_converts_from_the_trained_ranges(trained, tmp_path):
    kind, qat = trained
    x, _ = _data(64, seed=3)
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=x
    )
    assert report.ok and report.exact
    assert report.agreement.trained_activations and not report.agreement.unrolled
    assert any("learned in training" in n for n in report.notes)
    assert not any("calibrated on representative_data" in n for n in report.notes)
    # Each tracked range is the scale of an int8 tensor of the file.
    inner = _inner(qat)
    scales = _file_scales((tmp_path / "m.tflite").read_bytes())
    for point, (lo, hi) in zip(inner.POINTS, inner.activation_ranges.numpy(), strict=True):
        assert np.min(np.abs(scales / ((hi - lo) / 255) - 1)) < 1e-5, point
    # The file computes what the QAT model computes.
    keras_out = qat.predict(x, verbose=0)
    file_out = runners.run_litert((tmp_path / "m.tflite").read_bytes(), [x])[0]
    step = runners.interpreter((tmp_path / "m.tflite").read_bytes()).get_output_details()[0][
        "quantization"
    ][0]
    assert np.mean(np.abs(file_out - keras_out) <= step / 2 + 1e-6) >= 0.9
    assert report.top1_agreement >= 0.98


def _copy(qat):
    with td.quantize_scope():
        copy = keras.models.clone_model(qat)
    copy.set_weights(qat.get_weights())
    return copy


@pytest.mark.parametrize(("kind", "rows"), [("LSTM", {None}), ("GRU", {0, 1})])
def test_align_biases_moves_the_recurrent_biases_onto_the_file_grid(kind, rows):
    # An LSTM's file adds its whole bias to the input product; a GRU's, each
    # row to its own product (`None`: the whole bias).
    qat = _copy(_trained(kind))  # aligning changes the model
    before = _inner(qat).cell.bias.numpy()
    conv = pipeline.convert_bytes(qat, "full_int8", _data(64, seed=4)[0])
    stored = biases.recurrent_file_biases(conv.data, conv.matches)["rnn"]
    assert set(stored) == rows
    moves = biases.plan(qat, conv.data, conv.matches)
    assert [(mv.layer, mv.weight) for mv in moves if mv.layer == "rnn"] == [("rnn", "cell.bias")]
    assert all(mv.largest_move_in_steps <= biases.MAX_MOVE_STEPS for mv in moves)
    biases.apply(moves, qat)  # what export(..., align_biases=True) does with them
    after = _inner(qat).cell.bias.numpy()
    for row, (values, step) in stored.items():
        at = slice(None) if row is None else row
        np.testing.assert_allclose(after[at], values, rtol=0, atol=1e-6)
        assert 0 < np.max(np.abs(after[at] - before[at]) / step) <= biases.MAX_MOVE_STEPS


def test_untrained_recurrent_model_is_advised_to_train_its_ranges(tmp_path):
    # An LSTM `activations="int8"` would make 8-bit: the advice offers it.
    qat = td.quantize_model(_model("LSTM"), td.ternary())
    x, _ = _data(64)
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=x
    )
    assert not report.agreement.unrolled
    assert "activations='int8'" in report.agreement.advice()


def test_8_bit_states_compute_what_the_plain_layers_compute_up_to_their_rounding():
    # Gate order, reset-after GRU, return_sequences and go_backwards as Keras's
    # own layers: what `strip_quantization` gives back computes what trained.
    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES))
    x = L.LSTM(UNITS, return_sequences=True, name="lstm")(inp)
    x = L.GRU(UNITS, return_sequences=True, go_backwards=True, name="gru")(x)
    model = keras.Model(inp, L.LSTM(UNITS, go_backwards=True, name="last")(x))
    with td.quantize_scope():
        eight_bit = recurrent.with_int8_state(model)
    assert [type(layer).__name__ for layer in eight_bit.layers[1:]] == [
        "Int8LSTM",
        "Int8GRU",
        "Int8LSTM",
    ]
    x = _data(64, seed=5)[0] * 2
    eight_bit(x, training=True)  # sets every range from this batch
    for name in ("lstm", "gru", "last"):
        want = keras.Model(model.input, model.get_layer(name).output)(x).numpy()
        got = keras.Model(eight_bit.input, eight_bit.get_layer(name).output)(x).numpy()
        # 8-bit rounding at every step, accumulated over the stacked layers;
        # a gate in another order would be off by about the whole range.
        error = np.abs(got - want) / np.ptp(want)
        assert np.max(error) < 0.06 and np.mean(error) < 0.015, name
