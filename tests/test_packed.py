"""`tflm_packed`: codebook weights as ceil(log2 K)-bit indices, decoded by TFLM."""

import math
import re

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from benchmarks import export as bench_export
from tflite_export import __main__ as cli
from tflite_export import convert, exact, micro, packed, pipeline, runners, schema
from tfmot_discrete import keras
from tfmot_discrete.tfk.weights import codebook_items

L = keras.layers
CODEBOOKS = {
    "binary": td.binary(scale="mean_abs"),
    "ternary": td.ternary(),
    "four": td.CodebookQuantizer([1, -1, 0.5, -0.5]),
    "pow2": td.power_of_two(bits=3),
}
# Asymmetric: a negative BatchNorm factor flips a channel's codes, so the
# channels hold different int8 values and get one table each.
ASYM = td.CodebookQuantizer([-1, 0, 0.5])
LAYERS = ("conv", "dw", "sep", "tconv", "conv1d", "dense")


def _branch(prefix, inp):
    x = L.Conv2D(6, 3, padding="same", name=f"{prefix}_conv")(inp)
    x = L.BatchNormalization(name=f"{prefix}_bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name=f"{prefix}_dw")(x)
    x = L.SeparableConv2D(8, 3, padding="same", name=f"{prefix}_sep")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", name=f"{prefix}_tconv")(x)
    x = L.Reshape((16 * 16, 4))(x)
    x = L.Conv1D(4, 3, strides=4, name=f"{prefix}_conv1d")(x)
    x = L.Flatten()(x)
    return L.Dense(3, name=f"{prefix}_dense")(x)


def _model():
    inp = keras.Input((8, 8, 3))
    asym = L.Conv2D(6, 3, name="asym_conv")(inp)
    asym = L.BatchNormalization(name="asym_bn")(asym)
    asym = L.DepthwiseConv2D(3, padding="same", name="asym_dw")(asym)
    asym = L.BatchNormalization(name="asym_bn2")(asym)
    asym = L.Dense(2, name="asym_head")(L.Flatten()(asym))
    out = L.Concatenate()([_branch(p, inp) for p in CODEBOOKS] + [asym])
    return keras.Model(inp, out)


def _use_every_value(qat, seed=0):
    """Latent weights that project to every codebook value, a different factor
    per channel, and BatchNorm factors of both signs."""
    rng = np.random.default_rng(seed)
    for item in codebook_items(qat):
        latent, q = item.latent, item.quantizer
        vals = np.asarray(q.codebook.values)
        w = rng.permutation(np.resize(vals, latent.shape.num_elements())).reshape(latent.shape)
        f = rng.uniform(0.5, 2.0, size=latent.shape[-1]) if q.scale is not None else 1.0
        latent.assign((w * f).astype("float32"))
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, L.BatchNormalization):
            gamma, beta, mean, var = inner.get_weights()
            gamma[:] = np.resize([1.0, -1.0, 0.5, -2.0, 1.5, -0.7], gamma.shape)
            inner.set_weights([gamma, beta, mean, var])


@pytest.fixture(scope="module")
def files():
    keras.utils.set_random_seed(0)
    qat = td.quantize_model(
        _model(), {"asym_(conv|dw)": ASYM, **{f"{p}_.*": q for p, q in CODEBOOKS.items()}}
    )
    _use_every_value(qat)
    x = np.random.default_rng(1).normal(size=(24, 8, 8, 3)).astype("float32")
    conv = pipeline.convert_bytes(qat, "full_int8", representative_data=x)
    full, matches = conv.data, conv.matches
    data = packed.pack(full, [m.tensor for m in matches])
    return full, data, matches, x


def _int8_inputs(model_bytes, x):
    it = runners.tflm_interpreter(model_bytes)
    q = it.get_input_details(0)["quantization_parameters"]
    return [np.clip(np.round(x / q["scales"][0] + q["zero_points"][0]), -128, 127).astype(np.int8)]


def test_every_layer_and_codebook_packed_at_ceil_log2_k_bits(files):
    full, data, matches, _ = files
    fb = exact.read(full)
    read = {p.encoded: p for p in packed.read_packed(data)}
    seen = set()
    for m in matches:
        seen.add(tuple(m.cw.layer.split("_", 1)))
        p = read[m.tensor]
        k = len(m.cw.codebook.values)
        assert p.bits == math.ceil(math.log2(k)), m.cw.label
        # Lossless against the full_int8 file, and codebook x channel scale.
        tensor = fb.subgraphs[0].tensors[m.tensor]
        ints = exact.stored_values(fb, tensor).reshape(p.values.shape)
        np.testing.assert_array_equal(p.values, ints)
        stored = exact.dequantize(fb, tensor)  # float32, as the export reads it
        np.testing.assert_array_equal(
            p.dequantized().astype(np.float32), stored.reshape(p.values.shape)
        )
        step = float(np.max(p.scales))
        err = np.abs(p.dequantized() - m.reference.reshape(p.values.shape)).max()
        assert err <= 0.51 * step, (m.cw.label, err, step)
        table = np.unique(p.tables)
        assert table.size == (2 * k - 1 if m.cw.label.startswith("asym") else k), table
    assert seen == {(p, layer) for p in CODEBOOKS for layer in LAYERS} | {
        ("asym", "conv"),
        ("asym", "dw"),
    }
    # One table per tensor except where the channels differ (BatchNorm sign
    # flips), along the first axis (Conv2D) or the last (depthwise).
    per_channel = {
        m.cw.label: read[m.tensor].axis for m in matches if read[m.tensor].axis is not None
    }
    assert per_channel == {"asym_conv/kernel": 0, "asym_dw/depthwise_kernel": 3}
    # Index bytes are ceil(n x bits / 8); one 16-byte header and table each.
    for p in read.values():
        tables = p.tables.size
        assert p.stored_bytes == -(-p.values.size * p.bits // 8) + 16 + tables, p.name


def test_tflm_outputs_and_decoded_weights_equal_full_int8(files):
    full, data, matches, x = files
    inputs = _int8_inputs(full, x)
    want = runners.tflm_outputs(runners.tflm_interpreter(full), inputs)
    it = runners.tflm_interpreter(data, preserve_all_tensors=True)
    got = runners.tflm_outputs(it, inputs)
    np.testing.assert_array_equal(got, want)
    assert np.unique(want).size > 10
    # What TFLM's DECODE wrote into its arena, tensor by tensor.
    fb = exact.read(full)
    for p in packed.read_packed(data):
        decoded = np.asarray(it.GetTensor(p.decoded, 0)["tensor_data"])
        stored = exact.stored_values(fb, fb.subgraphs[0].tensors[p.encoded])
        np.testing.assert_array_equal(decoded.reshape(stored.shape), stored)


def test_overhead_is_stripped_and_arena_measured(files):
    full, data, _, x = files
    fb = exact.read(data)
    sg = fb.subgraphs[0]
    read = packed.read_packed(data)
    for p in read:
        assert sg.tensors[p.encoded].quantization is None
        q = sg.tensors[p.decoded].quantization
        assert len(q.zeroPoint) == 1
    for op in sg.operators:
        code = fb.operatorCodes[op.opcodeIndex].builtinCode
        if code in schema.BIAS_INPUT:
            k = schema.BIAS_INPUT[code]
            bias = int(op.inputs[k]) if k < len(op.inputs) else -1
            assert bias < 0 or sg.tensors[bias].quantization is None
    inputs = _int8_inputs(full, x)
    arenas = []
    for model_bytes in (full, data):
        it = runners.tflm_interpreter(model_bytes)
        runners.tflm_outputs(it, [inputs[0][:1]])
        arenas.append(runners.tflm_arena_bytes(it))
    largest = max(p.values.size for p in read)
    assert arenas[1] >= arenas[0] + largest


def test_choose_tables_bits_and_layout():
    rng = np.random.default_rng(0)
    ternary_two_used = rng.choice(np.array([-127, 127], np.int8), size=(8, 5))
    c = packed.choose_tables(ternary_two_used, 0)
    assert (c.bits, c.axis, c.tables) == (1, None, 1)
    flipped = np.stack([rng.choice(np.array([-126, 0, 63], np.int8), 50) for _ in range(4)])
    flipped[1::2] *= -1
    c = packed.choose_tables(flipped, 0)
    assert (c.bits, c.axis, c.tables, c.table_len) == (2, 0, 4, 3)
    many = np.arange(-64, 65, dtype=np.int8)
    with pytest.raises(packed.PackedFileError, match="129 distinct int8 values"):
        packed.choose_tables(many, None)


def _corrupt(data, p, offset_in_ancillary, value):
    """A copy of `data` with one byte of `p`'s DECODE metadata changed."""
    fb = exact.read(data)
    anc = None
    for op in fb.subgraphs[0].operators:
        outs = [int(o) for o in op.outputs]
        if p.decoded in outs:
            anc = int(op.inputs[2 * outs.index(p.decoded) + 1])
    raw = bytes(bytearray(fb.buffers[fb.subgraphs[0].tensors[anc].buffer].data))
    start = bytes(data).index(raw)
    out = bytearray(data)
    out[start + offset_in_ancillary] = value
    return bytes(out)


def test_corrupted_files_get_clear_errors(files):
    _, data, _, _ = files
    p = packed.read_packed(data)[0]
    with pytest.raises(packed.PackedFileError, match="index width 0 bits"):
        packed.read_packed(_corrupt(data, p, 5, 0xF0))
    with pytest.raises(packed.PackedFileError, match=r"index bytes; \d+ weights at 3 bits"):
        packed.read_packed(_corrupt(data, p, 5, 0xF3))
    with pytest.raises(packed.PackedFileError, match="reads value .* of its value tables"):
        packed.read_packed(_corrupt(data, p, 6, 100))
    with pytest.raises(packed.PackedFileError, match="DECODE metadata of type 7"):
        packed.read_packed(_corrupt(data, p, 0, 7))
    with pytest.raises(packed.PackedFileError, match="Not a .tflite flatbuffer"):
        packed.read_packed(b"\x00" * 64)
    with pytest.raises(packed.PackedFileError, match="Cannot read the flatbuffer"):
        packed.read_packed(data[:200])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small ternary Conv/BN/Dense QAT model on disk, with sample inputs."""
    d = tmp_path_factory.mktemp("packed_cli")
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(8, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(L.DepthwiseConv2D(3, name="dw")(x))
    out = L.Dense(5, name="head")(L.Flatten()(x))
    qat = td.quantize_model(keras.Model(inp, out), td.ternary())
    _use_every_value(qat)
    x = np.random.default_rng(2).normal(size=(16, 6, 6, 2)).astype("float32")
    qat.save(d / "qat.keras")
    np.save(d / "rep.npy", x)
    return d


def test_export_report_c_array_and_litert_refusal(saved, tmp_path):
    qat = tflite_export.load_model(saved / "qat.keras")
    x = np.load(saved / "rep.npy")
    path = tmp_path / "p.tflite"
    report = tflite_export.export(
        qat, path, format="tflm_packed", representative_data=x, c_array=tmp_path / "p.cc"
    )
    data = path.read_bytes()
    assert report.ok and report.exact and report.format == "tflm_packed"
    assert report.size_bytes == len(data) < report.full_int8_size_bytes < report.float_size_bytes
    assert [w.index_bits for w in report.weights] == [2, 2, 2]
    assert all(sorted(w.table.tolist()) == [-127, 0, 127] for w in report.weights)
    t = report.tflm
    assert t.identical and t.samples == len(x)
    assert t.arena_bytes > t.full_int8_arena_bytes > 0 and t.latency_s > 0
    text = str(report)
    assert "int8 value table" in text and "{-127, 0, 127}" in text
    assert f"full_int8 file {report.full_int8_size_bytes:,} bytes" in text
    assert f"on {len(x)} inputs: outputs identical" in text and text.endswith("OK")
    assert micro.parse_c_array((tmp_path / "p.cc").read_text()) == data
    with pytest.raises(tflite_export.ExportError, match="only TensorFlow Lite for Micro"):
        runners.run_litert(data, [x])
    with pytest.raises(tflite_export.ExportError, match="only TensorFlow Lite for Micro"):
        bench_export.latencies({"tflm_packed": data}, x[0], rounds=1)


def test_cli_export_and_verify_packed_files(saved, tmp_path, capsys):
    out = tmp_path / "p.tflite"
    args = [str(saved / "qat.keras"), "-o", str(out), "--format", "tflm_packed"]
    assert cli.main([*args, "--representative-data", str(saved / "rep.npy")]) == 0
    assert "(tflm_packed)" in capsys.readouterr().out
    assert cli.main(["verify", str(out), "--codebook=-1,0,1"]) == 0
    text = capsys.readouterr().out
    assert text.count("2-bit index (one table, int8 values {-127, 0, 127})") == 3
    assert "ran on 8 random inputs with TFLM" in text and text.rstrip().endswith("OK")
    model = ["--model", str(saved / "qat.keras")]
    assert cli.main(["verify", str(out), "--codebook=-1,0,1", *model]) == 0
    assert re.search(r"TFLM outputs vs .*qat.keras: max abs diff", capsys.readouterr().out)
    # A binary codebook does not describe ternary weights.
    assert cli.main(["verify", str(out), "--codebook=-1,1"]) == 1
    assert "NOT in codebook" in capsys.readouterr().out
    p = packed.read_packed(out.read_bytes())[0]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_corrupt(out.read_bytes(), p, 5, 0xF0))
    assert cli.main(["verify", str(bad), "--codebook=-1,0,1"]) == 2
    err = capsys.readouterr().err
    assert "damaged tflm_packed file" in err and "index width 0 bits" in err


def test_bad_input_names_the_smallest_format(tmp_path):
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")])
    x = np.zeros((4, 4), "float32")
    with pytest.raises(tflite_export.ExportError, match="Smallest format that fits: full_int8"):
        tflite_export.export(
            model, tmp_path / "a.tflite", format="tflm_packed", representative_data=x
        )
    big = td.CodebookQuantizer(np.arange(-64, 65).tolist())
    qat = td.quantize_model(model, big)
    with pytest.raises(tflite_export.ExportError, match=r"129 values.*fits: full_int8.*K=129"):
        tflite_export.export(
            qat, tmp_path / "b.tflite", format="tflm_packed", representative_data=x
        )
    assert not list(tmp_path.iterdir())


def test_tflm_refusal_of_tiny_softmax_scale():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).uniform(size=(8, 4)).astype("float32")
    files = []
    for w in (0.5, 1e-9):  # logits spanning about 1, then about 1e-9
        model.layers[0].set_weights([np.full((4, 3), w, "float32"), np.zeros(3, "float32")])
        model.layers[0].kernel[:, 0].assign(tf.fill([4], -w))
        files.append(convert.full_int8_tflite(model, zip([*x[:, None]])))
    assert micro.tflm_abort_reasons(runners.read_tflm_model(files[0])) == []
    runners.tflm_outputs(runners.tflm_interpreter(files[0]), [np.zeros((1, 4), np.int8)])
    (reason,) = micro.tflm_abort_reasons(runners.read_tflm_model(files[1]))
    assert "step x beta > 2^-26" in reason
    with pytest.raises(RuntimeError, match="SOFTMAX"):
        runners.tflm_interpreter(files[1])
    # The same check, before the child process runs TFLM.
    with pytest.raises(tflite_export.ExportError, match="SOFTMAX input"):
        runners.run_tflm(files[1], [x[:1]])
