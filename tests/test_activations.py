"""`quantize_model(..., activations="int8")`: simulated 8-bit activations, and a
full-int8 file that keeps the ranges learned in training."""

import re

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tflite_export
import tfmot_discrete as td
from tflite_export import convert, runners
from tfmot_discrete import keras

L = keras.layers


def _model():
    inp = keras.Input((16,))
    x = L.Dense(32, name="d0")(inp)
    x = L.BatchNormalization(name="bn0")(x)
    x = L.ReLU(name="relu0")(x)
    x = L.Dense(32, activation="relu", name="d1")(x)
    out = L.Dense(4, name="logits")(x)
    return keras.Model(inp, out)


def _data(n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = rng.integers(0, 4, size=n)
    return x, y


def _train(qat, x, y, epochs=3):
    qat.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return qat


def _output_quantized(wrapper):
    return bool(wrapper.quantize_config.get_output_quantizers(wrapper.layer))


def test_int8_activations_follow_tflite_fusion():
    qat = td.quantize_model(_model(), td.binary(), activations="int8")
    by_name = {layer.name: layer for layer in qat.layers}
    assert any(isinstance(layer, convert.QuantizeLayer) for layer in qat.layers)
    # Dense -> BN -> ReLU is one fused op: only the ReLU output is quantized.
    assert not _output_quantized(by_name["quant_d0"])
    assert "bn0" in by_name  # BatchNorm stays unwrapped (fused into d0)
    assert _output_quantized(by_name["quant_relu0"])
    assert _output_quantized(by_name["quant_d1"])  # built-in relu: its output
    assert _output_quantized(by_name["quant_logits"])
    plain = td.strip_quantization(_train(qat, *_data(64), epochs=1))
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in _model().layers]


def test_a_second_quantize_model_of_one_float_model_places_them_alike():
    # The first call's graph shares the float model's unwrapped layers (its
    # BatchNorm gets a second consumer); only the model's own graph counts.
    model = _bn_cnn()
    spec = {"conv|logits": "int8", ".*": td.ternary()}
    td.quantize_model(model, spec)
    qat = td.quantize_model(model, spec, activations="int8")
    by_name = {layer.name: layer for layer in qat.layers}
    assert "bn" in by_name and "quant_bn" not in by_name
    assert not _output_quantized(by_name["quant_conv"])
    assert _output_quantized(by_name["quant_relu"])


def test_default_inserts_no_activation_quantizers():
    qat = td.quantize_model(_model(), td.binary())
    assert not any(isinstance(layer, convert.QuantizeLayer) for layer in qat.layers)
    for layer in qat.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            assert not _output_quantized(layer)


def test_bad_activations_value():
    with pytest.raises(ValueError, match="Received: activations='int4'"):
        td.quantize_model(_model(), td.binary(), activations="int4")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_int8_qat_model_saves_and_loads(tmp_path, suffix):
    x, y = _data(64)
    qat = _train(td.quantize_model(_model(), td.ternary(), activations="int8"), x, y, epochs=1)
    qat.save(tmp_path / f"q{suffix}")
    with td.quantize_scope():
        loaded = keras.models.load_model(tmp_path / f"q{suffix}")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    loaded.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    loaded.fit(x, y, epochs=1, verbose=0)


def test_full_int8_file_keeps_the_trained_activation_ranges(tmp_path):
    x, y = _data()
    keras.utils.set_random_seed(0)
    qat = _train(
        td.quantize_model(_model(), td.CodebookQuantizer([1, -1, 0.5, -0.5]), activations="int8"),
        x,
        y,
    )
    # No representative data needed: the ranges come from training.
    report = tflite_export.export(qat, tmp_path / "q.tflite", format="full_int8")
    assert report.exact and report.ok
    assert any("learned in training" in n for n in report.notes)
    trained = qat.predict(x, verbose=0)
    ours = runners.run_litert((tmp_path / "q.tflite").read_bytes(), [x])[0]
    # The same model calibrated afresh from the stripped float model agrees less
    # with what was trained.
    plain = td.strip_quantization(qat)
    recal = convert.full_int8_tflite(plain, zip(x[:128]))
    theirs = runners.run_litert(recal, [x])[0]
    ours_err = np.abs(ours - trained).mean()
    theirs_err = np.abs(theirs - trained).mean()
    assert ours_err < theirs_err, (ours_err, theirs_err)
    out_step = runners.interpreter(recal).get_output_details()[0]["quantization"][0]
    assert ours_err < 2 * out_step
    # Packed for TFLM from the same trained ranges: TFLM outputs identical.
    packed = tflite_export.export(qat, tmp_path / "p.tflite", format="tflm_packed")
    assert packed.ok and packed.exact and packed.tflm.identical
    assert any("learned in training" in n for n in packed.notes)


def _pooled_cnn():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, activation="relu", name="conv")(inp)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Dropout(0.1, name="drop")(L.Flatten(name="flat")(x))
    return keras.Model(inp, L.Dense(4, name="logits")(x))


def test_layers_that_keep_their_input_scale_get_no_range_of_their_own(tmp_path):
    # In the file MaxPool, Reshape (Flatten) and Dropout keep the scale of the
    # ReLU before them; a range of their own made training round twice there.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=256)
    keras.utils.set_random_seed(0)
    qat = td.quantize_model(_pooled_cnn(), td.ternary(), activations="int8")
    by_name = {getattr(layer, "layer", layer).name: layer for layer in qat.layers}
    assert _output_quantized(by_name["conv"]) and _output_quantized(by_name["logits"])
    for name in ("pool", "flat", "drop"):
        layer = by_name[name]
        assert not (
            isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) and _output_quantized(layer)
        ), name
    _train(qat, x, y, epochs=2)
    tflite_export.export(qat, tmp_path / "q.tflite", format="full_int8")
    data = (tmp_path / "q.tflite").read_bytes()
    step = runners.interpreter(data).get_output_details()[0]["quantization"][0]
    got = runners.run_litert(data, [x])[0]
    # What was trained is what the file computes: every output on the same
    # 8-bit level but for the rare one at a rounding boundary.
    same = np.abs(got - qat.predict(x, verbose=0)) < step / 2
    assert same.mean() >= 0.99, same.mean()


def _bn_cnn():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, name="conv")(inp)
    x = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(x))
    x = L.Flatten(name="flat")(L.MaxPooling2D(name="pool")(x))
    x = L.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inp, L.Dense(4, name="logits")(x))


def _trained_bn_cnn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=256)
    keras.utils.set_random_seed(1)
    qat = td.quantize_model(
        _bn_cnn(), {"conv|logits": "int8", ".*": td.ternary()}, activations="int8"
    )
    return _train(qat, x, y, epochs=2), x


def test_align_biases_makes_the_model_compute_the_files_integers(tmp_path):
    qat, x = _trained_bn_cnn()
    before = {w.name: w.numpy() for w in qat.weights}
    assert len(before) == len(qat.weights)
    report = tflite_export.export(
        qat, tmp_path / "q.tflite", format="full_int8", representative_data=x, align_biases=True
    )
    assert report.ok and report.agreement.biases_aligned
    assert any(n.startswith("biases: 3 moved") for n in report.notes), report.notes
    # Only the BatchNorm's beta and the two Dense biases moved, and only a little.
    moved = {w.name for w in qat.weights if not np.array_equal(w.numpy(), before[w.name])}
    assert moved == {"bn/beta:0", "hidden/bias:0", "logits/bias:0"}, moved
    data = (tmp_path / "q.tflite").read_bytes()
    step = runners.interpreter(data).get_output_details()[0]["quantization"][0]
    got = runners.run_litert(data, [x])[0]
    keras_out = qat.predict(x, verbose=0)
    # Every output on the file's 8-bit level: the same integers.
    assert np.abs(got - keras_out).max() < step / 2
    assert report.top1_agreement == 1.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"format": "int8"}, "format='full_int8' or 'tflm_packed'. Received: format='int8'"),
        ({"format": "full_int8", "align_biases": "yes"}, "Received: align_biases='yes'"),
    ],
)
def test_align_biases_arguments_are_checked(kwargs, words, tmp_path):
    # Checked before anything converts: an untrained QAT model is enough.
    qat = td.quantize_model(_bn_cnn(), td.ternary(), activations="int8")
    kwargs = {"align_biases": True, **kwargs}
    with pytest.raises(tflite_export.ExportError, match=re.escape(words)):
        tflite_export.export(qat, tmp_path / "q.tflite", **kwargs)
    assert not (tmp_path / "q.tflite").exists()


def test_align_biases_needs_trained_activation_ranges(tmp_path):
    x, y = _data(64)
    qat = _train(td.quantize_model(_model(), td.ternary()), x, y, epochs=1)
    with pytest.raises(tflite_export.ExportError, match="activations='int8'"):
        tflite_export.export(
            qat, tmp_path / "q.tflite", format="full_int8", representative_data=x, align_biases=True
        )
    with pytest.raises(tflite_export.ExportError, match="not the path of a saved one"):
        tflite_export.export(
            tmp_path / "m.keras", tmp_path / "q.tflite", format="full_int8", align_biases=True
        )
    assert not (tmp_path / "q.tflite").exists()


def test_a_failed_export_puts_the_moved_biases_back(tmp_path):
    qat, x = _trained_bn_cnn()
    before = [w.numpy() for w in qat.weights]
    # The flash budget is checked after the move: the export fails there.
    with pytest.raises(tflite_export.ExportError, match="flash"):
        tflite_export.export(
            qat,
            tmp_path / "q.tflite",
            format="full_int8",
            representative_data=x,
            align_biases=True,
            flash=100,
        )
    for weight, value in zip(qat.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.name)
    assert not (tmp_path / "q.tflite").exists()


def test_align_biases_leaves_a_bias_farther_than_its_rounding_and_says_so(tmp_path, monkeypatch):
    from tflite_export import biases  # noqa: PLC0415

    qat, x = _trained_bn_cnn()
    before = [w.numpy() for w in qat.weights]
    # With no move allowed, every bias counts as too far from the file's.
    monkeypatch.setattr(biases, "MAX_MOVE_STEPS", 0.0)
    report = tflite_export.export(
        qat, tmp_path / "q.tflite", format="full_int8", representative_data=x, align_biases=True
    )
    (note,) = [n for n in report.notes if n.startswith("biases:")]
    assert note.startswith("biases: 0 moved"), note
    assert "left as they were" in note and "bn/beta" in note and "logits/bias" in note, note
    for weight, value in zip(qat.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.name)


@pytest.mark.parametrize("activations", [None, "int8"])
def test_full_int8_biases_are_one_rounding_from_the_float_biases(activations):
    # The export moves each codebook weight's step, and with it the step of the
    # int32 bias: that bias is rounded from the float one (BatchNorm folded in),
    # not from the converter's integers, which would round it twice.
    from tflite_export import biases, pipeline  # noqa: PLC0415

    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=256)
    keras.utils.set_random_seed(1)
    qat = td.quantize_model(_bn_cnn(), td.CodebookQuantizer([-3, -1, 1, 3]), activations)
    qat = _train(qat, x, y, epochs=2)
    conv = pipeline.convert_bytes(qat, "full_int8", representative_data=x)
    stored = biases.file_biases(conv.data, conv.matches)
    expected = biases.float_biases(qat)
    assert set(stored) == {"conv", "hidden", "logits"}
    for name, (bias, step) in stored.items():
        off = np.abs(bias - expected[name]) / step
        assert off.max() <= 0.5 * (1 + 1e-3), (name, off.max())


def test_cli_align_biases_saves_the_moved_model_that_computes_the_files_integers(tmp_path, capsys):
    from tflite_export import __main__ as cli  # noqa: PLC0415

    qat, x = _trained_bn_cnn()
    qat.save(tmp_path / "qat.keras")
    np.save(tmp_path / "x.npy", x)
    out, moved = tmp_path / "q.tflite", tmp_path / "aligned.keras"
    args = [str(tmp_path / "qat.keras"), "-o", str(out), "--format", "full_int8"]
    args += ["--representative-data", str(tmp_path / "x.npy")]
    assert cli.main([*args, "--align-biases", str(moved)]) == 0
    assert "biases: " in capsys.readouterr().out
    with td.quantize_scope():
        aligned = keras.models.load_model(moved)
    # Only the moved weights changed: the BatchNorm's beta and the Dense biases.
    changed = {
        a.name
        for a, b in zip(aligned.weights, qat.weights, strict=True)
        if not np.array_equal(a.numpy(), b.numpy())
    }
    assert changed and all(n.split("/")[-1].startswith(("beta", "bias")) for n in changed), changed
    data = out.read_bytes()
    step = runners.interpreter(data).get_output_details()[0]["quantization"][0]
    got = runners.run_litert(data, [x])[0]
    assert np.abs(got - aligned.predict(x, verbose=0)).max() < step / 2
    # Refused before anything is written: the model's own path, a path without a model suffix.
    for bad, words in [
        (tmp_path / "qat.keras", "overwrite"),
        (tmp_path / "m.txt", ".keras or .h5"),
    ]:
        argv = [args[0], "-o", str(tmp_path / "n.tflite"), "--align-biases", str(bad)]
        assert cli.main(argv) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "n.tflite").exists()
