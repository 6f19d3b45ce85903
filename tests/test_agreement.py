"""Full-integer files report how often they pick Keras's class: the share is
computed right, held to its limit (calibrated or trained activation ranges),
and a file below it is written with a warning that says what to do."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

import tflite_export
import tfmot_discrete as td
from tflite_export import agreement, runners
from tflite_export.agreement import AgreementWarning

keras = td.keras
L = keras.layers


def test_top1_counts_rows_with_the_same_largest_output():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    got = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.35, 0.65]])
    assert agreement.top1(ref, got) == 0.75
    # Every position of a sequence output counts.
    assert agreement.top1(ref.reshape(2, 2, 2), got.reshape(2, 2, 2)) == 0.75
    # No class axis: no top-1.
    assert agreement.top1(np.zeros((4, 1)), np.zeros((4, 1))) is None
    assert agreement.top1(np.zeros(4), np.zeros(4)) is None


def test_measure_gives_steps_and_the_limit_of_the_ranges():
    ref = np.array([[0.0, 1.0], [1.0, 0.0]])
    got = np.array([[0.0, 1.25], [1.0, 0.0]])
    a = agreement.measure(ref, got, 0.25, 0.125, trained_activations=False, real_data=True)
    assert a.top1 == 1.0 and a.max_steps == 2.0 and a.samples == 2
    assert a.limit == agreement.TOP1_LIMIT_CALIBRATED == 0.98 and a.within
    b = agreement.measure(ref, got, 0.25, None, trained_activations=True, real_data=True)
    assert b.max_steps is None and b.limit == agreement.TOP1_LIMIT_TRAINED == 0.995
    flipped = agreement.measure(
        ref, ref[::-1], 1.0, 0.1, trained_activations=False, real_data=False
    )
    assert flipped.top1 == 0.0 and not flipped.within
    advice = flipped.advice()
    assert advice.startswith("WARNING: the file picks another class than Keras on 100.00 %")
    assert "activations='int8'" in advice and "representative_data" in advice
    d = flipped.to_dict()
    assert d["top1_agreement"] == 0.0 and d["within_limit"] is False
    assert d["representative_inputs"] is False


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y


def test_report_gives_the_top1_agreement_litert_shows(tmp_path):
    """The report's share equals the one computed here from LiteRT's and
    Keras's outputs on the same representative inputs."""
    x, y = _digits()
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    h = L.Dense(32, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, L.Dense(10, name="logits")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    qat = td.quantize_model(model, {"hidden": td.ternary(), "logits": "int8"})
    rep = x[:200]
    path = tmp_path / "m.tflite"
    report = tflite_export.export(qat, path, format="full_int8", representative_data=rep)
    keras_top = td.strip_quantization(qat).predict(rep, verbose=0).argmax(-1)
    lite_top = runners.run_litert(path.read_bytes(), [rep])[0].argmax(-1)
    assert report.top1_agreement == pytest.approx(np.mean(keras_top == lite_top), abs=0)
    assert report.agreement.samples == 200 and report.agreement.real_data
    assert not report.agreement.trained_activations
    scale = runners.output_scales(path.read_bytes())[0]
    keras_out = td.strip_quantization(qat).predict(rep, verbose=0)
    lite_out = runners.run_litert(path.read_bytes(), [rep])[0]
    assert report.agreement.max_steps == pytest.approx(
        np.abs(lite_out - keras_out).max() / scale, rel=1e-6
    )
    text = str(report)
    assert "top-1 agreement with Keras" in text and "output steps" in text
    assert text.endswith("OK") == report.agrees
    d = json.loads(report.to_json())
    assert d["outputs"]["top1_agreement"] == report.top1_agreement
    assert d["outputs"]["agreement"]["top1_limit"] == 0.98
    # Weight-only formats run float activations: no agreement to hold.
    int8 = tflite_export.export(qat, tmp_path / "w.tflite", format="int8")
    assert int8.agreement is None and int8.top1_agreement is None and int8.agrees


def _one_large_unit(sequence: bool = False):
    """One hidden unit 1000x larger than the others sets the int8 step of the
    hidden activations: the small units, which carry the class, round to 0
    in the file, so it no longer picks Keras's class. `sequence`: the hidden
    layer inside a `TimeDistributed` over one step (converted unrolled)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((1, 8) if sequence else (8,))
    hidden = L.Dense(8, activation="relu", name="hidden")
    h = L.Flatten()(L.TimeDistributed(hidden, name="steps")(inp)) if sequence else hidden(inp)
    head = L.Dense(4, name="logits")
    model = keras.Model(inp, head(h))
    k = rng.normal(size=(8, 8)).astype("float32") * 0.01
    k[:, 0] = 0.0
    k[0, 0] = 1000.0
    hidden.set_weights([k, np.zeros(8, "float32")])
    w = rng.normal(size=(8, 4)).astype("float32")
    w[0] = 0.0  # the large unit does not reach the logits
    head.set_weights([w, np.zeros(4, "float32")])
    x = np.abs(rng.normal(size=(64, 8))).astype("float32")
    return model, x[:, None] if sequence else x


def test_a_file_below_the_limit_is_written_with_a_warning_saying_what_to_do(tmp_path):
    model, x = _one_large_unit()
    qat = td.quantize_model(model, "int8")
    path = tmp_path / "bad.tflite"
    with pytest.warns(AgreementWarning, match=r"picks another class than Keras"):
        report = tflite_export.export(qat, path, format="full_int8", representative_data=x)
    assert path.exists() and report.ok  # written: the weights are right, the answers differ
    assert report.top1_agreement < 0.98 and not report.agrees
    last = str(report).splitlines()[-1]
    assert last.startswith("WARNING:") and "activations='int8'" in last
    assert "unrolled copy" not in last
    assert report.to_dict()["outputs"]["agreement"]["within_limit"] is False
    assert report.to_dict()["outputs"]["agreement"]["unrolled_copy"] is False


def test_the_warning_of_an_unrolled_file_does_not_offer_trained_ranges(tmp_path):
    # Its file converts from an unrolled copy with calibrated ranges, trained or not.
    model, x = _one_large_unit(sequence=True)
    qat = td.quantize_model(model, "int8", activations="int8")
    with pytest.warns(AgreementWarning, match=r"picks another class than Keras"):
        report = tflite_export.export(
            qat, tmp_path / "bad.tflite", format="full_int8", representative_data=x
        )
    assert report.agreement.unrolled and not report.agreement.trained_activations
    last = str(report).splitlines()[-1]
    assert "unrolled copy whose activation ranges are calibrated at export" in last
    assert "so the file runs what was trained" not in last
    assert "calibrate on more, or more typical, representative data" in last
    assert report.to_dict()["outputs"]["agreement"]["unrolled_copy"] is True
