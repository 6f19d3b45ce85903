"""Exact TFLite export in every format, verification, TFLM, C array, CLI."""

import pathlib

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import exact, micro, runners, verify
from tflite_export.schema import storage_name
from tfmot_discrete import keras

L = keras.layers
FOUR = [1, -1, 0.5, -0.5]


def _model(kind):
    shapes = {"Dense": (12,), "Conv1D": (10, 3)}
    inp = keras.Input(shapes.get(kind, (8, 8, 3)))
    if kind == "Dense":
        x = L.Dense(8, name="dense_a")(inp)
    elif kind == "Conv1D":
        x = L.Conv1D(6, 3, name="conv1d")(inp)
    elif kind == "Conv2D":
        x = L.Conv2D(6, 3, name="conv")(inp)
    elif kind == "DepthwiseConv2D":
        x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)
    elif kind == "SeparableConv2D":
        x = L.SeparableConv2D(6, 3, name="sep")(inp)
    elif kind == "ConvBNReLU":
        x = L.Conv2D(6, 3, name="conv")(inp)
        x = L.BatchNormalization(name="bn")(x)
        x = L.ReLU(name="relu")(x)
    x = L.Flatten()(x)
    out = L.Dense(4, name="head")(x)
    return keras.Model(inp, out, name=kind.lower())


def _trained(kind, q, epochs=2):
    model = _model(kind)
    qat = td.quantize_model(model, q)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, *model.input_shape[1:])).astype("float32")
    y = rng.normal(size=(48, 4)).astype("float32")
    qat.compile(keras.optimizers.Adam(0.02), "mse")
    qat.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return qat, x


def _stored_types(data):
    fb = exact.read(data)
    return sorted({storage_name(fb.subgraphs[0].tensors[t]) for _, t in exact.weight_tensors(fb)})


def _assert_exact_file(data, codebook_values, scaled):
    """Independent of the export's own bookkeeping: every weight tensor of the
    file, read back with LiteRT, is codebook x one factor per channel."""
    checks = verify.check_codebook_file(data, td.Codebook(codebook_values))
    assert checks and all(c.exact for c in checks), [(c.name, c.max_error) for c in checks]


FORMATS = ["float", "int8", "int4", "full_int8"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "kind", ["Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "ConvBNReLU"]
)
def test_every_layer_type_exports_exactly(kind, fmt, tmp_path):
    qat, x = _trained(kind, td.CodebookQuantizer(FOUR))
    path = tmp_path / "m.tflite"
    report = tflite_export.export(qat, path, format=fmt, representative_data=x[:16])
    data = path.read_bytes()
    assert report.exact and report.ok
    assert report.size_bytes == len(data)
    _assert_exact_file(data, FOUR, scaled=False)
    if fmt != "full_int8":
        assert report.max_abs_diff <= 1e-4 * report.output_range
    else:
        assert report.tflm_max_lsb is not None and report.tflm_max_lsb <= 2
        assert report.max_abs_diff < 0.1 * report.output_range
    types = set(_stored_types(data))
    if fmt == "float":
        assert types == {"float32"}
    elif fmt == "int4":
        # Depthwise kernels have no int4 kernel in ai-edge-quantizer: int8 there.
        assert "int4" in types and types <= {"int4", "int8"}
    else:
        assert types == {"int8"}


@pytest.mark.parametrize("fmt", ["int8", "int4", "full_int8"])
@pytest.mark.parametrize("qname", ["binary", "ternary", "four_mean_abs", "power_of_two"])
def test_codebooks_exact_through_batchnorm(qname, fmt, tmp_path):
    q = {
        "binary": td.binary(scale="mean_abs"),
        "ternary": td.ternary(),
        "four_mean_abs": td.CodebookQuantizer(FOUR, scale="mean_abs"),
        "power_of_two": td.power_of_two(bits=3),
    }[qname]
    qat, x = _trained("ConvBNReLU", q)
    path = tmp_path / "m.tflite"
    if qname == "power_of_two" and fmt == "int4":
        with pytest.raises(tflite_export.ExportError, match="smallest exact format: int8"):
            tflite_export.export(qat, path, format=fmt, representative_data=x[:16])
        assert not path.exists()
        return
    report = tflite_export.export(qat, path, format=fmt, representative_data=x[:16])
    assert report.exact and report.ok
    _assert_exact_file(path.read_bytes(), q.values, scaled=True)


def test_four_values_in_int4_use_a_chosen_step(tmp_path):
    qat, x = _trained("Dense", td.CodebookQuantizer(FOUR))
    path = tmp_path / "m.tflite"
    tflite_export.export(qat, path, format="int4")
    it = runners.interpreter(path.read_bytes())
    codes = set()
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and d["quantization_parameters"]["scales"].size:
            codes |= set(np.unique(it.get_tensor(d["index"])).tolist())
    # codes ±6 and ±3 (step 1/6): 0.5 -> 3.5 with the standard step 1/7 is not integral.
    # The file holds exactly the codes of the values the trained weights take.
    trained = exact.codebook_weights(qat)[0].codes
    assert codes == set(np.round(6 * np.unique(trained)).astype(int).tolist())
    assert codes <= {-6, -3, 3, 6} and codes & {3, -3}


def test_inexact_codebook_is_refused_then_allowed(tmp_path):
    q = td.CodebookQuantizer([0.3, -1.7, 1.0])
    qat, x = _trained("Dense", q)
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous good file")
    with pytest.raises(tflite_export.ExportError) as err:
        tflite_export.export(qat, path, format="int4")
    msg = str(err.value)
    assert "'dense_a'" in msg and "[-1.7, 0.3, 1.0]" in msg and "smallest exact format: int8" in msg
    assert path.read_bytes() == b"previous good file"
    report = tflite_export.export(qat, path, format="int4", allow_inexact=True)
    assert not report.exact
    assert max(w.max_error for w in report.weights) > 0
    assert any("no exact int4 lattice" in n for n in report.notes)
    assert "max error" in str(report)
    # int8 is exact for it (step 0.1/17: codes ±17, -51, 30 ...).
    assert tflite_export.export(qat, path, format="int8").exact


def test_size_targets_for_binary_and_ternary(tmp_path):
    inp = keras.Input((256,))
    x = L.Dense(512, activation="relu", name="d1")(inp)
    x = L.Dense(512, activation="relu", name="d2")(x)
    out = L.Dense(10, name="d3")(x)
    model = keras.Model(inp, out)
    for q in (td.binary(scale="mean_abs"), td.ternary()):
        qat = td.quantize_model(model, q)
        sizes = {}
        for fmt in ("float", "int8", "int4"):
            r = tflite_export.export(qat, tmp_path / f"{fmt}.tflite", format=fmt)
            assert r.exact
            sizes[fmt] = r.size_bytes
        assert sizes["float"] / sizes["int4"] >= 7.0, sizes
        assert sizes["float"] / sizes["int8"] >= 3.8, sizes


def test_export_from_saved_and_stripped_models(tmp_path):
    qat, x = _trained("ConvBNReLU", td.ternary())
    for name in ("m.keras", "m.h5", "savedmodel"):
        kwargs = {"save_format": "tf"} if name == "savedmodel" else {}
        qat.save(tmp_path / name, **kwargs)
        r = tflite_export.export(tmp_path / name, tmp_path / "a.tflite", format="int8")
        assert r.exact and len(r.weights) == 2
    plain = td.strip_quantization(qat)
    r = tflite_export.export(plain, tmp_path / "b.tflite", format="int8")
    assert r.ok and r.weights == []  # no codebook information in a plain model
    _assert_exact_file((tmp_path / "b.tflite").read_bytes(), [-1, 0, 1], scaled=True)


def test_plain_float_model_exports_with_outputs_reported(tmp_path):
    inp = keras.Input((64,))
    out = L.Dense(10, name="d1")(L.Dense(256, activation="relu", name="d0")(inp))
    model = keras.Model(inp, out)
    for fmt in ("int8", "int4"):
        r = tflite_export.export(model, tmp_path / f"{fmt}.tflite", format=fmt)
        assert r.ok and r.tolerance is None and r.weights == []
        assert any("without a codebook were rounded" in n for n in r.notes)
    # A codebook layer next to a float one: its weights are still checked exactly.
    qat = td.quantize_model(model, {"d0": td.binary()})
    r = tflite_export.export(qat, tmp_path / "mixed.tflite", format="int4")
    assert r.exact and [w.name for w in r.weights] == ["d0/kernel"]


def test_c_array_round_trip(tmp_path):
    qat, x = _trained("Dense", td.binary())
    cc = tmp_path / "model_data.cc"
    r = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=x[:8], c_array=cc
    )
    data = (tmp_path / "m.tflite").read_bytes()
    text = cc.read_text()
    assert r.c_array == str(cc)
    assert micro.parse_c_array(text) == data
    assert "alignas(16) const unsigned char model_data[]" in text
    assert f"const unsigned int model_data_len = {len(data)};" in text
    header = (tmp_path / "model_data.h").read_text()
    assert "extern const unsigned char model_data[];" in header
    assert "extern const unsigned int model_data_len;" in header


def test_full_int8_needs_representative_data(tmp_path):
    qat, _ = _trained("Dense", td.binary())
    with pytest.raises(tflite_export.ExportError, match="needs `representative_data`"):
        tflite_export.export(qat, tmp_path / "m.tflite", format="full_int8")


def test_representative_generator_is_accepted(tmp_path):
    qat, x = _trained("Dense", td.binary())
    r = tflite_export.export(
        qat,
        tmp_path / "m.tflite",
        format="full_int8",
        representative_data=([s[None]] for s in x[:10]),
    )
    assert r.ok and r.samples == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"format": "int3"}, r"Received: format='int3'"),
        (
            {"format": "full_int8", "representative_data": np.zeros((4, 3))},
            r"shape \(4, 3\); the model takes inputs of shape \(N, 12\)",
        ),
        ({"format": "full_int8", "representative_data": np.array([["a"] * 12])}, "must be numeric"),
        ({"format": "full_int8", "representative_data": np.full((2, 12), np.nan)}, "NaN or inf"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    qat, _ = _trained("Dense", td.binary(), epochs=1)
    with pytest.raises(tflite_export.ExportError, match=match):
        tflite_export.export(qat, tmp_path / "m.tflite", **kwargs)
    assert not (tmp_path / "m.tflite").exists()


def test_nan_weights_are_refused(tmp_path):
    model = _model("Dense")
    model.get_layer("head").bias.assign(np.full(4, np.nan, "float32"))
    with pytest.raises(tflite_export.ExportError, match="NaN or inf"):
        tflite_export.export(model, tmp_path / "m.tflite", format="float")


# --- the console script -------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    qat, x = _trained("ConvBNReLU", td.CodebookQuantizer(FOUR, scale="mean_abs"))
    qat.save(d / "qat.keras")
    np.save(d / "rep.npy", x[:16])
    np.save(d / "bad.npy", np.zeros((4, 3), "float32"))
    (d / "corrupt.keras").write_bytes(b"not a model")
    return d


def test_cli_end_to_end(saved, capsys):
    out = saved / "m.tflite"
    rc = cli.main(
        [
            str(saved / "qat.keras"),
            "-o",
            str(out),
            "--format",
            "full_int8",
            "--representative-data",
            str(saved / "rep.npy"),
            "--c-array",
            str(saved / "model_data.cc"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.exists() and (saved / "model_data.cc").exists()
    assert "conv/kernel" in text and "exact" in text and "TFLM vs LiteRT" in text
    assert text.strip().endswith("OK")
    rc = cli.main(
        [
            "verify",
            str(out),
            "--codebook",
            "1,-1,0.5,-0.5",
            "--model",
            str(saved / "qat.keras"),
            "--representative-data",
            str(saved / "rep.npy"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "outputs vs" in text and text.strip().endswith("OK")
    rc = cli.main(["verify", str(out), "--codebook", "1,-1"])
    text = capsys.readouterr().out
    assert rc == 1 and "NOT in codebook" in text
    assert "ran on 8 random inputs with LiteRT: outputs finite" in text
    # A leading minus sign is a value, not an option.
    assert cli.main(["verify", str(out), "--codebook", "-1,-0.5,0.5,1"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.keras", "--format", "int8"], "Model file not found"),
        (["corrupt.keras", "--format", "int8"], "is not a readable Keras model file"),
        (["qat.keras", "--format", "int3"], "invalid choice: 'int3'"),
        (
            ["qat.keras", "--format", "full_int8", "--representative-data", "bad.npy"],
            "has shape (4, 3)",
        ),
        (["qat.keras", "--format", "full_int8", "--representative-data", "nope.npy"], "not found"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(saved, capsys, args, message):
    out = saved / "never.tflite"
    argv = [str(saved / args[0]) if not args[0].startswith("-") else args[0], "-o", str(out)]
    argv += [str(saved / a) if a.endswith(".npy") else a for a in args[1:]]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(cli.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().splitlines()[-1].startswith("tflite-export: error:")
    assert not out.exists()
    assert not list(pathlib.Path(saved).glob(".never.tflite.*"))


def test_cli_verify_bad_input(saved, capsys):
    assert cli.main(["verify", str(saved / "corrupt.keras"), "--codebook", "1,-1"]) == 2
    assert "not a readable .tflite file" in capsys.readouterr().err
    assert cli.main(["verify", str(saved / "x.tflite"), "--codebook", "1"]) == 2
    assert "Received: --codebook '1'" in capsys.readouterr().err


def _op_snapshot(data):
    """`OP(input types)` for every operator of the file, types as stored."""
    fb = exact.read(data)
    sg = fb.subgraphs[0]
    ops = [d["op_name"] for d in runners.interpreter(data)._get_ops_details()]  # noqa: SLF001 - LiteRT lists op names only here
    out = []
    for name, op in zip(ops, sg.operators):
        types = [storage_name(sg.tensors[i]) for i in op.inputs if i >= 0]
        out.append(f"{name}({', '.join(types)})")
    return out


def test_exported_ops_and_dtypes_snapshot(tmp_path):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.Flatten()(x)
    out = L.Dense(5, name="dense")(x)
    qat = td.quantize_model(keras.Model(inp, out), td.ternary())
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    got = {}
    for fmt in FORMATS:
        tflite_export.export(qat, tmp_path / f"{fmt}.tflite", fmt, representative_data=x)
        got[fmt] = _op_snapshot((tmp_path / f"{fmt}.tflite").read_bytes())
    f32 = "float32"
    assert got == {
        "float": [
            f"CONV_2D({f32}, {f32}, {f32})",
            f"DEPTHWISE_CONV_2D({f32}, {f32}, {f32})",
            f"RESHAPE({f32}, int32)",
            f"FULLY_CONNECTED({f32}, {f32})",
        ],
        "int8": [
            "DEQUANTIZE(int8)",
            f"CONV_2D({f32}, {f32}, {f32})",
            "DEQUANTIZE(int8)",
            f"DEPTHWISE_CONV_2D({f32}, {f32}, {f32})",
            f"RESHAPE({f32}, int32)",
            "DEQUANTIZE(int8)",
            f"FULLY_CONNECTED({f32}, {f32})",
        ],
        "int4": [
            "DEQUANTIZE(int4)",
            f"CONV_2D({f32}, {f32}, {f32})",
            "DEQUANTIZE(int8)",  # no int4 depthwise in ai-edge-quantizer
            f"DEPTHWISE_CONV_2D({f32}, {f32}, {f32})",
            f"RESHAPE({f32}, int32)",
            "DEQUANTIZE(int4)",
            f"FULLY_CONNECTED({f32}, {f32})",
        ],
        "full_int8": [
            "CONV_2D(int8, int8, int32)",
            "DEPTHWISE_CONV_2D(int8, int8, int32)",
            "RESHAPE(int8, int32)",
            "FULLY_CONNECTED(int8, int8)",
        ],
    }


def test_conv3d_weights_are_found_under_their_operator(tmp_path):
    # CONV_3D is operator 132 of the TFLite schema; its weights are exact in the file.
    model = keras.Sequential([keras.Input((4, 4, 4, 2)), L.Conv3D(3, 2, name="c3")])
    qat = td.quantize_model(model, td.binary(scale="mean_abs"))
    report = tflite_export.export(qat, tmp_path / "c3.tflite", format="float")
    assert [w.name for w in report.weights] == ["c3/kernel"]
    assert report.exact and report.ok
    checks = verify.check_codebook_file((tmp_path / "c3.tflite").read_bytes(), td.Codebook([-1, 1]))
    assert [c.exact for c in checks] == [True]


@pytest.mark.parametrize("fmt", ["float", "int8"])
def test_conv3d_transpose_weights_are_found_under_their_operator(tmp_path, fmt):
    # CONV_3D_TRANSPOSE keeps Keras' (d, h, w, out, in) filter; output filters on axis 3.
    model = keras.Sequential([keras.Input((3, 3, 3, 3)), L.Conv3DTranspose(2, 2, name="t3")])
    qat = td.quantize_model(model, td.binary(scale="mean_abs"))
    report = tflite_export.export(qat, tmp_path / "t3.tflite", format=fmt)
    assert [w.name for w in report.weights] == ["t3/kernel"]
    assert report.exact and report.ok
    checks = verify.check_codebook_file((tmp_path / "t3.tflite").read_bytes(), td.Codebook([-1, 1]))
    assert [c.exact for c in checks] == [True]
