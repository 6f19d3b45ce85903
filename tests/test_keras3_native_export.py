"""Keras 3 models that tf_keras cannot rebuild export natively (Keras's
`ExportArchive` -> SavedModel -> TFLite builtin operators): a user's layer of
Dense sublayers, `QuantizeWrapper`s inside such a layer, a subclassed model,
KerasHub encoders; every quantized weight verified exact in the file, and the
file's outputs held to Keras's."""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import exact, pipeline, runners, tfbackend, verify
from tflite_export import keras3 as k3_export

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="in-process native Keras 3 export runs on the TensorFlow backend",
)
import keras3_models as km  # noqa: E402

#: Share of the output range within which int8 / int4 weight-only files match
#: Keras (the converter rounds the float weights of the custom layers too).
ROUNDED_RTOL = {"int8": 0.02, "int4": 0.15}


def _x(seed=0, n=32, features=8):
    return np.random.default_rng(seed).normal(size=(n, features)).astype("float32")


def _quantize(model, mapping):
    """`td.quantize_model`; a custom layer's kernels may stay float (a notice)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return td.quantize_model(model, mapping)


@pytest.fixture(scope="module")
def block():
    """A Functional model with a user's `Block` (two Dense sublayers): the
    top-level Dense layers on codebooks, the block's kernels float."""
    keras.utils.set_random_seed(0)
    mapping = {"d_in": td.ternary(), "head": td.CodebookQuantizer([1, -1, 0.5, -0.5], "learned")}
    qat = _quantize(km.block_model(), mapping)
    x = _x()
    return km.train_steps(qat, x), x


def _lite(data, x):
    return runners.run_litert(data, x if isinstance(x, list) else [x])[0]


def _check(report, qat, expected_weights):
    """The report is OK and exact, and checked every quantized weight the
    reader finds in the model (`expected_weights` among them)."""
    assert report.ok and report.exact, report
    found = [cw.label for cw in k3_export.quantized_weights(qat)]
    assert set(expected_weights) <= set(found)
    # (a tied table may be stored twice: both copies are checked)
    assert sorted({w.name for w in report.weights}) == sorted(found)
    assert all(w.exact for w in report.weights)
    assert any("converted from Keras 3 as it is" in n for n in report.notes)
    d = report.to_dict()
    assert d["exact"] and len(d["weights"]) == len(found)


def test_the_reader_finds_every_quantized_weight_as_data(block):
    qat, _ = block
    cws = k3_export.quantized_weights(qat)
    assert {"d_in/kernel", "head/kernel"} <= {cw.label for cw in cws}
    for cw in cws:
        values = cw.values / np.asarray(cw.scales)
        assert set(np.unique(cw.codes)) <= set(cw.codebook.values.tolist())
        np.testing.assert_allclose(values, cw.codes, rtol=1e-6)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_custom_block_model_exports_exact(block, fmt, tmp_path):
    qat, x = block
    path = tmp_path / f"block_{fmt}.tflite"
    report = tflite_export.export(qat, path, format=fmt)
    _check(report, qat, ["d_in/kernel", "head/kernel"])
    want = np.asarray(qat(x))
    span = float(want.max() - want.min())
    assert np.abs(_lite(path.read_bytes(), x) - want).max() <= ROUNDED_RTOL[fmt] * span


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_custom_block_model_full_integer(block, fmt, tmp_path):
    qat, x = block
    path = tmp_path / f"block_{fmt}.tflite"
    report = tflite_export.export(qat, path, format=fmt, representative_data=x)
    _check(report, qat, ["d_in/kernel", "head/kernel"])
    assert report.tflm_agrees
    want = np.asarray(qat(x))
    got = runners.run_tflm(path.read_bytes(), [x], dequantize=True)[0]
    assert np.abs(got - want).max() <= 0.05 * float(want.max() - want.min())


def test_wrappers_inside_a_custom_layer_are_read_and_exported(tmp_path):
    """`QuantizeWrapper`s made in a user's layer's `__init__`: found where they
    sit (`qblock/d1`), the 8-bit one with its trained steps, both exact."""
    keras.utils.set_random_seed(1)
    model = km.quantized_block_model()
    x = _x(1)
    km.train_steps(model, x)
    cws = k3_export.quantized_weights(model)
    assert [(cw.label, cw.trained_int8) for cw in cws] == [
        ("qblock/d1/kernel", False),
        ("qblock/d2/kernel", True),
    ]
    assert len(np.unique(cws[1].codes)) > 3  # trained 8-bit codes, not one value
    for fmt in ("int4",):  # the 8-bit weight stays int8 in an int4 file
        path = tmp_path / f"q_{fmt}.tflite"
        report = tflite_export.export(model, path, format=fmt, representative_data=x)
        _check(report, model, ["qblock/d1/kernel", "qblock/d2/kernel"])


def _trained_subclassed():
    """`km.Subclassed`, built and trained two steps, and its inputs."""
    keras.utils.set_random_seed(2)
    model = km.Subclassed()
    x = _x(2)
    model(x)
    km.train_steps(model, x)
    return model, x


@pytest.mark.parametrize("fmt", ["int4", "tflm_packed"])
def test_subclassed_model_exports_exact(fmt, tmp_path):
    model, x = _trained_subclassed()
    path = tmp_path / f"sub_{fmt}.tflite"
    report = tflite_export.export(model, path, format=fmt, representative_data=x)
    _check(report, model, ["hidden/kernel", "signs/kernel"])
    want = np.asarray(model(x))
    span = float(want.max() - want.min())
    if fmt in ("int8", "int4"):
        assert np.abs(_lite(path.read_bytes(), x) - want).max() <= ROUNDED_RTOL[fmt] * span


@pytest.mark.parametrize("fmt", ["int4", "tflm_packed"])
def test_verify_file_compares_a_subclassed_model(fmt, tmp_path):
    """A subclassed model has no `inputs`: `verify_file` feeds it what the
    file takes (random inputs, or the given ones), as the model or its file."""
    model, x = _trained_subclassed()
    path = tmp_path / f"sub_{fmt}.tflite"
    tflite_export.export(model, path, format=fmt, representative_data=x)
    model.save(tmp_path / "sub.keras")
    rtol = ROUNDED_RTOL.get(fmt, 0.05)  # a full-integer file: 5% of the output range
    # (random inputs leave a full-integer file's calibrated ranges: given ones)
    first = None if fmt == "int4" else x
    for given, data in ((model, first), (tmp_path / "sub.keras", x)):
        check = tflite_export.verify_file(
            path, [1, -1, 0.5, -0.5], model=given, representative_data=data
        )
        assert check.samples == 32
        assert check.max_abs_diff <= rtol * check.output_range
        # The 4-value layer's 8 x 12 kernel is on the codebook (`out` is float).
        assert [w.exact for w in check.weights if w.count == 96] == [True]


def _signed_dense(quantized):
    keras.utils.set_random_seed(6)
    model = km.SignedDense(quantized)
    x = _x(6)
    model(x)
    return km.train_steps(model, x), x


@pytest.mark.parametrize("fmt", ["int8", "full_int8", "tflm_packed"])
def test_a_multiplier_folded_into_a_codebook_dense_is_checked_there(fmt, tmp_path):
    """The converter folds a `DiscreteMultiplier` into the Dense before it: the
    file's kernel, channel by channel, is checked as the Dense's codebook values
    times the vector's (+1 or -1)."""
    model, x = _signed_dense(quantized=True)
    [signs] = [cw for cw in k3_export.quantized_weights(model) if cw.label == "signs/kernel"]
    assert set(np.unique(signs.codes)) == {-1.0, 1.0}  # both signs folded in
    report = tflite_export.export(
        model, tmp_path / f"s_{fmt}.tflite", format=fmt, representative_data=x
    )
    _check(report, model, ["d/kernel", "signs/kernel"])
    assert any(
        n.startswith("signs/kernel: folded by the converter into d/kernel") for n in report.notes
    )


def test_a_folded_multiplier_of_other_signs_is_reported_inexact():
    """The same check says "not exact" once one channel of the stored kernel
    has the other sign than the vector's."""
    model, x = _signed_dense(quantized=True)
    conv = pipeline.convert_bytes(model, "int8", x)
    [m] = [m for m in conv.matches if m.cw.label == "signs/kernel"]
    assert m.folded_into == "d/kernel"
    assert [w.exact for w in verify.check_weights(conv.data, [m])] == [True]
    fb = exact.read(conv.data)
    tensor = fb.subgraphs[0].tensors[m.tensor]
    ints = np.array(exact.stored_values(fb, tensor))  # int8, (6 outputs, 8 inputs)
    row = int(np.argmax(np.abs(ints).sum(axis=1)))  # a channel that is not all zero
    ints[row] = -ints[row]
    fb.buffers[tensor.buffer].data = ints.reshape(-1).view(np.uint8)
    [w] = verify.check_weights(exact.write(fb), [m])
    assert not w.exact and w.max_error > 0


def test_a_multiplier_folded_into_a_float_dense_is_refused_saying_what_to_do(tmp_path):
    model, x = _signed_dense(quantized=False)
    with pytest.raises(
        tflite_export.ExportError, match=r"DiscreteMultiplier .*\['signs/kernel'\]"
    ) as e:
        tflite_export.export(model, tmp_path / "f.tflite", format="int8")
    assert "Quantize that layer to a codebook" in e.value.message
    assert "non-linearity" in e.value.message
    assert not (tmp_path / "f.tflite").exists()


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(3)
    tokens = np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32")
    # The token table at 8 bits, as the recipe's first layer ("8-bit edges").
    qat = _quantize(km.encoder_model(), {"embed/token_embedding": "int8", ".*": td.ternary()})
    return km.train_steps(qat, tokens), tokens


@pytest.mark.parametrize("fmt", ["int8"])
def test_keras_hub_encoder_exports_exact(encoder, fmt, tmp_path):
    qat, tokens = encoder
    path = tmp_path / f"enc_{fmt}.tflite"
    report = tflite_export.export(qat, path, format=fmt, representative_data=tokens)
    _check(report, qat, ["head/kernel"])
    want = np.asarray(qat(tokens))
    span = float(want.max() - want.min())
    assert np.abs(_lite(path.read_bytes(), tokens) - want).max() <= ROUNDED_RTOL[fmt] * span


TABLE = "embed/token_embedding/embeddings"


@pytest.fixture(scope="module")
def ternary_table():
    """The encoder with a ternary token table (a KerasHub `ReversibleEmbedding`,
    one scale per row), which weight-only files keep float32 for GATHER."""
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(3)
    tokens = np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32")
    qat = _quantize(km.encoder_model(), {".*token_embedding.*": td.ternary(), ".*": td.ternary()})
    return km.train_steps(qat, tokens), tokens


def test_ternary_reversible_embedding_table_is_exact_in_int8(ternary_table, tmp_path):
    qat, tokens = ternary_table
    [cw] = [cw for cw in k3_export.quantized_weights(qat) if cw.label == TABLE]
    assert len(np.unique(cw.scales[:, 0])) > 1  # one scale per row, not one for the table
    report = tflite_export.export(
        qat, tmp_path / "t.tflite", format="int8", representative_data=tokens
    )
    _check(report, qat, [TABLE, "head/kernel"])
    assert [(w.storage, w.exact, w.max_error) for w in report.weights if w.name == TABLE] == [
        ("float32", True, 0.0)
    ]


def test_a_table_off_its_codebook_values_is_reported_inexact(ternary_table):
    """The same check says "not exact" once one stored entry of the table is
    moved off `codebook value x its row's scale`."""
    qat, tokens = ternary_table
    conv = pipeline.convert_bytes(qat, "int8", tokens)
    [m] = [m for m in conv.matches if m.cw.label == TABLE]
    assert [w.exact for w in verify.check_weights(conv.data, [m])] == [True]
    fb = exact.read(conv.data)
    tensor = fb.subgraphs[0].tensors[m.tensor]
    values = np.array(exact.dequantize(fb, tensor)).reshape(m.reference.shape)
    step = float(abs(m.units[3]))
    values[3, 1] += 0.25 * step  # a quarter of row 3's scale: between codebook values
    fb.buffers[tensor.buffer].data = values.reshape(-1).view(np.uint8)
    [w] = verify.check_weights(exact.write(fb), [m])
    assert not w.exact
    assert w.max_error == pytest.approx(0.25 * step, rel=1e-4)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_reversible_embedding_read_both_ways_is_exact_in_int8(tie_weights, tmp_path):
    """Tied, the table is stored twice in a weight-only file (float32 for
    GATHER, int8 for the logits' FULLY_CONNECTED): both copies are checked.
    Untied, `reverse_embeddings` is the logits' weight."""
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(5)
    tokens = np.random.default_rng(5).integers(0, 20, (32, 6)).astype("int32")
    qat = km.train_steps(_quantize(km.reversible_lm_model(tie_weights), td.ternary()), tokens)
    report = tflite_export.export(
        qat, tmp_path / "lm.tflite", format="int8", representative_data=tokens
    )
    assert report.ok and report.exact, report
    stored = sorted((w.name, w.storage) for w in report.weights if w.name.startswith("table/"))
    if tie_weights:
        assert stored == [("table/embeddings", "float32"), ("table/embeddings", "int8")]
    else:
        assert stored == [("table/embeddings", "float32"), ("table/reverse_embeddings", "int8")]
    assert not report.rounded  # no copy of the table left to the converter's rounding
    assert report.tolerance is not None and report.max_abs_diff <= report.tolerance


def test_a_saved_keras_hub_model_with_wrappers_inside_exports_from_its_file(
    ternary_table, tmp_path
):
    """The wrappers inside KerasHub's layers are in no config Keras saves: the
    file is loaded with them put back (`td.keras3.load_model`), every weight exact."""
    qat, tokens = ternary_table
    qat.save(tmp_path / "enc.keras")
    report = tflite_export.export(
        tmp_path / "enc.keras", tmp_path / "enc.tflite", format="int8", representative_data=tokens
    )
    _check(report, qat, [TABLE, "encoder/feedforward_output_dense/kernel"])


def test_keras_hub_decoder_exports_exact_in_int8(tmp_path):
    """Every weight of a `TransformerDecoder` model on the codebook (its token
    table too): exact in int8; `full_int8` refused, naming the GATHER table."""
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(7)
    tokens = np.random.default_rng(7).integers(0, 20, (32, 6)).astype("int32")
    qat = km.train_steps(_quantize(km.decoder_model(), td.ternary()), tokens)
    path = tmp_path / "dec.tflite"
    report = tflite_export.export(qat, path, format="int8", representative_data=tokens)
    _check(report, qat, [TABLE, "decoder/self_attention/query/kernel", "head/kernel"])
    want = np.asarray(qat(tokens))
    span = float(want.max() - want.min())
    assert np.abs(_lite(path.read_bytes(), tokens) - want).max() <= ROUNDED_RTOL["int8"] * span
    with pytest.raises(tflite_export.ExportError, match=r"'embed/token_embedding'.*GATHER"):
        tflite_export.export(
            qat, tmp_path / "d8.tflite", format="full_int8", representative_data=tokens
        )


def test_tiny_gpt2_backbone_exports_exact_in_int8(tmp_path):
    """A `GPT2Backbone` (dict inputs of a free length, fixed by the samples'):
    every weight on the codebook exact in int8, and the file computes the
    backbone's sequence output. Without samples, the free length is refused."""
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(8)
    model = km.gpt2_model()
    x = {
        "padding_mask": np.ones((16, 6), "int32"),
        "token_ids": np.random.default_rng(8).integers(0, 20, (16, 6)).astype("int32"),
    }
    model(x)
    qat = _quantize(model, td.ternary())
    path = tmp_path / "gpt2.tflite"
    report = tflite_export.export(qat, path, format="int8", representative_data=x)
    _check(
        report,
        qat,
        ["token_embedding/embeddings", "transformer_layer_0/self_attention/query/kernel"],
    )
    want = np.asarray(qat(x))
    got = _lite(path.read_bytes(), [x[k] for k in sorted(x)]).reshape(want.shape)
    assert np.abs(got - want).max() <= ROUNDED_RTOL["int8"] * float(want.max() - want.min())
    with pytest.raises(tflite_export.ExportError, match=r"free length \(padding_mask") as e:
        tflite_export.export(qat, tmp_path / "free.tflite", format="int8")
    assert "representative_data" in e.value.message


@pytest.fixture(scope="module")
def encoder_float_embeddings():
    """The encoder with its token table left float: `full_int8` stores a GATHER
    table with one step, which a table trained with a scale per row is not."""
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(3)
    tokens = np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32")
    qat = _quantize(km.encoder_model(), {"embed/.*": None, ".*": td.ternary()})
    return km.train_steps(qat, tokens), tokens


def test_keras_hub_encoder_full_int8_refused_naming_the_tflm_operator(
    encoder_float_embeddings, tmp_path
):
    qat, tokens = encoder_float_embeddings
    with pytest.raises(tflite_export.ExportError, match="SELECT"):
        tflite_export.export(
            qat, tmp_path / "e.tflite", format="full_int8", representative_data=tokens
        )
    assert not (tmp_path / "e.tflite").exists()
    report = tflite_export.export(
        qat, tmp_path / "e.tflite", format="full_int8", representative_data=tokens, target="litert"
    )
    _check(report, qat, ["head/kernel"])


@pytest.mark.parametrize("fmt", ["int4"])
def test_bert_backbone_with_dict_inputs_exports_exact(fmt, tmp_path):
    pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(4)
    model = km.bert_model()
    rng = np.random.default_rng(4)
    x = {
        "padding_mask": np.ones((16, 6), "int32"),
        "segment_ids": rng.integers(0, 2, (16, 6)).astype("int32"),
        "token_ids": rng.integers(0, 30, (16, 6)).astype("int32"),
    }
    model(x)
    path = tmp_path / f"bert_{fmt}.tflite"
    report = tflite_export.export(model, path, format=fmt, representative_data=x)
    _check(report, model, ["head/kernel"])
    want = np.asarray(model(x))
    got = _lite(path.read_bytes(), [x[k] for k in sorted(x)])  # the file's inputs: sorted names
    span = float(want.max() - want.min())
    assert np.abs(got - want).max() <= ROUNDED_RTOL[fmt] * span


def test_cli_exports_a_saved_custom_layer_model(block, tmp_path):
    qat, x = block
    saved = tmp_path / "block.keras"
    qat.save(saved)
    out = tmp_path / "cli.tflite"
    assert (
        cli.main(
            [str(saved), "-o", str(out), "--format", "int4", "--json", str(tmp_path / "r.json")]
        )
        == 0
    )
    want = np.asarray(qat(x))
    assert np.abs(_lite(out.read_bytes(), x) - want).max() <= ROUNDED_RTOL["int4"] * float(
        want.max() - want.min()
    )
    assert '"d_in/kernel"' in (tmp_path / "r.json").read_text()
    # Its outputs checked against the saved model (Keras 3 inputs, Functional).
    check = tflite_export.verify_file(out, [-1, 0, 1], model=saved, representative_data=x)
    assert check.samples == len(x)
    assert check.max_abs_diff <= ROUNDED_RTOL["int4"] * check.output_range


def test_jax_trained_custom_layer_model_exports_through_a_tensorflow_process(tmp_path):
    """Trained on JAX (a worker process), exported by `export` there: saved,
    converted by a TensorFlow child process, exact, and the file computes what
    the JAX model computes."""
    worker = pathlib.Path(__file__).with_name("keras3_native_worker.py")
    root = str(worker.parent.parent)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([root, str(worker.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["backend"] == "jax"
    report = result["report"]
    assert report["exact"] and report["ok"]
    assert {"d_in/kernel", "head/kernel"} <= {w["name"] for w in report["weights"]}
    assert any("jax backend" in n for n in report["notes"])
    x, want = np.load(tmp_path / "x.npy"), np.load(tmp_path / "keras.npy")
    got = _lite((tmp_path / "block.tflite").read_bytes(), x)
    assert np.abs(got - want).max() <= ROUNDED_RTOL["int4"] * float(want.max() - want.min())
    # A KerasHub encoder, its wrappers inside KerasHub's layers: reloaded there
    # with them (`td.keras3.load_model`), every weight exact.
    hub = result["hub_report"]
    assert hub["exact"] and hub["ok"] and len(hub["weights"]) == 8
    assert {TABLE, "encoder/feedforward_output_dense/kernel"} <= {w["name"] for w in hub["weights"]}
    x, want = np.load(tmp_path / "hub_x.npy"), np.load(tmp_path / "hub_keras.npy")
    got = _lite((tmp_path / "hub.tflite").read_bytes(), x)
    assert np.abs(got - want).max() <= ROUNDED_RTOL["int8"] * float(want.max() - want.min())


class _Erfinv(keras.layers.Layer):
    """An operation TFLite has no builtin operator for."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.tanh(x) * 0.5)


def test_an_operation_without_a_builtin_operator_is_refused_by_name(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(_Erfinv()(inputs)))
    with pytest.raises(tflite_export.ExportError, match="Erfinv") as err:
        tflite_export.export(model, tmp_path / "e.tflite", format="int8")
    assert "builtin operator" in err.value.message
    assert not (tmp_path / "e.tflite").exists()


def test_a_layer_class_of_the_running_script_is_refused_for_another_backend():
    """The TensorFlow process that exports a JAX or PyTorch model imports the
    model's layer classes: one defined in `__main__` cannot be."""
    script_block = type("Block", (km.Block,), {"__module__": "__main__"})
    inputs = keras.Input((8,))
    model = keras.Model(inputs, script_block(8, name="b")(inputs))
    with pytest.raises(tflite_export.ExportError, match=r"Block is defined in the running script"):
        tfbackend.layer_modules(model)
    inputs = keras.Input((8,))
    assert tfbackend.layer_modules(keras.Model(inputs, km.Block(8)(inputs))) == ["keras3_models"]


def test_the_tensorflow_process_imports_the_package_of_a_wrapped_layer():
    """A KerasHub layer that is wrapped (the walk stops at the wrapper) still
    has its package imported by the TensorFlow process."""
    pytest.importorskip("keras_hub")
    qat = _quantize(km.reversible_lm_model(True), td.ternary())
    assert "keras_hub" not in {
        type(layer).__module__.split(".")[0] for _, layer in k3_export.walk(qat)
    }
    assert tfbackend.layer_modules(qat) == ["keras_hub"]


def test_full_int8_without_samples_is_refused_as_on_the_tf_keras_route(block, tmp_path):
    qat, _ = block
    with pytest.raises(tflite_export.MissingDataError, match="representative_data"):
        tflite_export.export(qat, tmp_path / "m.tflite", format="full_int8")
