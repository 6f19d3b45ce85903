"""Recurrent, attention, EinsumDense and TimeDistributed layers in every export format.

Each model's weights are codebook values times a per-channel scale, as a
trained QAT model's are; its codebook weights are described as the export
reads them from a QAT model (`exact.CodebookWeight`), and the file of each
format is made, searched and rewritten by the export's own steps, then read
back with LiteRT (and TFLM for full_int8).
"""

from __future__ import annotations

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import (
    convert,
    exact,
    lattice,
    packed,
    pipeline,
    runners,
    schema,
    sequence,
    verify,
)
from tflite_export.report import TFLM_LSB
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk import keras

L = keras.layers
TERNARY = Codebook([-1.0, 0.0, 1.0])


def _recurrent():
    x = inp = keras.Input((4, 3))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(x)
    x = L.GRU(4, return_sequences=True, name="gru")(x)
    x = L.SimpleRNN(4, name="rnn")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


def _embedding_lstm():
    inp = keras.Input((5,), dtype="int32")
    x = L.Embedding(50, 4, name="embedding")(inp)
    x = L.LSTM(4, name="lstm")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


def _attention():
    x = inp = keras.Input((4, 6))
    x = L.Conv1D(8, 3, padding="same", name="conv")(x)
    # gamma != 1: the converter must not fold it into the projections' weights.
    x = L.LayerNormalization(name="norm", gamma_initializer="random_uniform")(x)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 6), bias_axes="d", name="einsum")(x)
    x = L.TimeDistributed(L.Dense(4), name="td_dense")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


def _convlstm():
    x = inp = keras.Input((3, 5, 5, 2))
    x = L.ConvLSTM2D(4, 3, padding="same", return_sequences=True, name="convlstm")(x)
    x = L.TimeDistributed(L.Conv2D(2, 3), name="td_conv")(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x))


MODELS = {
    "recurrent": _recurrent,
    "embedding_lstm": _embedding_lstm,
    "attention": _attention,
    "convlstm": _convlstm,
}
#: The codebook weights of each model (`layer/weight` as the export names them).
EXPECTED = {
    "recurrent": [
        "bi/forward/kernel",
        "bi/forward/recurrent_kernel",
        "bi/backward/kernel",
        "bi/backward/recurrent_kernel",
        "gru/kernel",
        "gru/recurrent_kernel",
        "rnn/kernel",
        "rnn/recurrent_kernel",
        "logits/kernel",
    ],
    "embedding_lstm": [
        "lstm/kernel",
        "lstm/recurrent_kernel",
        "logits/kernel",
    ],
    "attention": [
        "conv/kernel",
        "mha/query/kernel",
        "mha/key/kernel",
        "mha/value/kernel",
        "mha/attention_output/kernel",
        "einsum/kernel",
        "td_dense/kernel",
        "logits/kernel",
    ],
    "convlstm": [
        *(f"convlstm/kernel[{g}]" for g in sequence.GATES),
        *(f"convlstm/recurrent_kernel[{g}]" for g in sequence.GATES),
        "td_conv/kernel",
        "logits/kernel",
    ],
}
FORMATS = ("float", "int8", "int4", "full_int8", "tflm_packed")


def _weight_name(layer, variable) -> str:
    """`kernel`, `forward/recurrent_kernel`, `query/kernel`: the variable's
    path below the layer, cells left out."""
    parts = variable.name.split(":")[0].split("/")[1:]
    parts = [p for p in parts if not p.endswith("_cell")]
    if isinstance(layer, L.Bidirectional):
        parts[0] = parts[0].split("_")[0]  # forward_lstm -> forward
    if isinstance(layer, L.TimeDistributed):
        parts = parts[-1:]
    return "/".join(parts)


def _channel_axes(layer, name, ndim) -> tuple[int, ...]:
    """The axes a weight has one scale per (as `quantize_model` trains them)."""
    if isinstance(layer, L.MultiHeadAttention) and not name.startswith("attention_output"):
        return (ndim - 2, ndim - 1)
    if isinstance(layer, L.Embedding):
        return (0,)
    return (ndim - 1,)


def _on_codebook(model, seed=0) -> list[exact.CodebookWeight]:
    """Sets every weight of rank >= 2 to ternary codes times per-channel
    scales; returns them as the export reads them from a QAT model."""
    rng = np.random.default_rng(seed)
    cws = []
    for layer in model.layers:
        values = []
        for v in layer.weights:
            a = v.numpy()
            name = _weight_name(layer, v)
            # A GRU's bias is 2-D; the embedding stays float (full_int8 refuses
            # codebook tables, see test_full_int8_refuses_a_codebook_embedding).
            if name.endswith("kernel"):
                axes = _channel_axes(layer, name, a.ndim)
                scale_shape = [a.shape[i] if i in axes else 1 for i in range(a.ndim)]
                codes = rng.integers(-1, 2, a.shape).astype(np.float32)
                scales = np.broadcast_to(
                    rng.uniform(0.1, 0.4, scale_shape).astype(np.float32), a.shape
                )
                a = codes * scales
                cls = sequence.layout_class(layer)
                for (gate, c), (_, s) in zip(
                    sequence.gate_pieces(layer, name, codes),
                    sequence.gate_pieces(layer, name, scales),
                ):
                    cws.append(
                        exact.CodebookWeight(
                            layer=layer.name,
                            layer_class=cls,
                            weight=f"{name}[{gate}]" if gate else name,
                            codebook=TERNARY,
                            codes=c,
                            scales=s,
                        )
                    )
            values.append(a)
        layer.set_weights(values)
    return cws


def _inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (n, *t.shape[1:])
        if t.dtype.is_integer:
            out.append(rng.integers(0, 50, shape).astype(np.int32))
        else:
            out.append(rng.normal(size=shape).astype(np.float32))
    return out


class _Model:
    def __init__(self, kind):
        keras.utils.set_random_seed(0)
        self.model = MODELS[kind]()
        self.cws = _on_codebook(self.model)
        self.rep = _inputs(self.model, 8, 1)
        self.files = {}
        self.convertible = self.float_bytes = None

    def file(self, fmt):
        """`(bytes, matches, weight checks)` of the format, made with the
        export's own steps (codebook weights found, written on their
        lattice, read back)."""
        if fmt not in self.files:
            if self.convertible is None:
                self.convertible = sequence.conversion_model(self.model)
                self.float_bytes = convert.float_tflite(self.convertible)
            if fmt == "float":
                data = self.float_bytes
            elif fmt in ("int8", "int4"):
                data = convert.weight_only_tflite(self.float_bytes, 8 if fmt == "int8" else 4)
            elif fmt == "full_int8":
                data = convert.full_int8_tflite(self.convertible, zip(*self.rep))
            else:
                data = self.file("full_int8")[0]
            fb = exact.read(data)
            if fmt == "tflm_packed":
                matches = self.files["full_int8"][1]
            else:
                matches = lattice.find_codebook_weights(fb, data, self.float_bytes, self.cws)
                lattice.write_lattices(fb, matches, False, [])
                data = exact.write(fb)
            if fmt == "tflm_packed":
                full = data
                data = packed.pack(full, [m.tensor for m in matches])
                checks = verify.check_packed_weights(data, full, matches)
            else:
                checks = verify.check_weights(data, matches)
            self.files[fmt] = (data, matches, checks)
        return self.files[fmt]


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    return request.param, _Model(request.param)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_codebook_weight_found_and_exact(built, fmt):
    kind, m = built
    _, matches, checks = m.file(fmt)
    assert {c.name for c in checks} == set(EXPECTED[kind])
    assert {m.cw.label for m in matches} == set(EXPECTED[kind])
    bad = [(c.name, c.storage, c.max_error) for c in checks if not c.exact]
    assert not bad
    if fmt in ("int4", "tflm_packed"):
        # Unrolled, every recurrent and attention kernel feeds FULLY_CONNECTED
        # or CONV_2D: the int4 writer and TFLM's DECODE cover them all.
        assert all(c.stored_bits <= 4 for c in checks)


@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
def test_weight_only_outputs_match_keras(built, fmt):
    kind, m = built
    data, _, _ = m.file(fmt)
    xs = _inputs(m.model, 4, 2)
    want = m.model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    got = runners.run_litert(data, xs)[0].reshape(want.shape)
    span = float(want.max() - want.min())
    assert np.abs(got - want).max() <= pipeline.WEIGHT_ONLY_RTOL * span


def test_full_int8_on_tflm_as_other_layers(built):
    kind, m = built
    data, _, _ = m.file("full_int8")
    lsb, _, layers = pipeline._tflm_check(data, _inputs(m.model, 4, 2))  # noqa: SLF001
    # The unrolled layers chain many requantizing operators; measured 0-4 LSB.
    assert lsb <= min(TFLM_LSB * layers, 2 * TFLM_LSB)


def test_tflm_packed_runs_as_its_full_int8_file(built):
    kind, m = built
    full, _, _ = m.file("full_int8")
    data, _, checks = m.file("tflm_packed")
    assert packed.compare_on_tflm(data, full, _inputs(m.model, 3, 2)).identical
    assert len(data) < len(full)


# Refusals: the layer, the operator and what to do.


def _export_plain(model, tmp_path, fmt="float"):
    return tflite_export.export(model, tmp_path / "m.tflite", format=fmt)


def test_variable_length_recurrent_layer_refused(tmp_path):
    inp = keras.Input((None, 3))
    model = keras.Model(inp, L.Dense(2)(L.GRU(4, name="gru")(inp)))
    with pytest.raises(tflite_export.ExportError) as e:
        _export_plain(model, tmp_path)
    msg = e.value.message.splitlines()[0]
    assert "'gru' (GRU)" in msg and "WHILE" in msg and "keras.Input(shape=(40, 8))" in msg
    assert not (tmp_path / "m.tflite").exists()


def test_stateful_recurrent_layer_refused(tmp_path):
    inp = keras.Input((4, 3), batch_size=1)
    model = keras.Model(inp, L.LSTM(4, stateful=True, name="lstm")(inp))
    with pytest.raises(tflite_export.ExportError, match="'lstm' \\(LSTM\\).*stateful=False"):
        _export_plain(model, tmp_path)


def test_tflm_refusal_names_the_operator(tmp_path):
    # TFLM slices tensors of at most 4 dimensions; LiteRT runs the file.
    inp = keras.Input((2, 3, 3, 2))
    x = L.Lambda(lambda t: t[:, 1])(inp)
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    rep = np.random.default_rng(0).normal(size=(4, 2, 3, 3, 2)).astype(np.float32)
    with pytest.raises(tflite_export.ExportError) as e:
        tflite_export.export(
            model, tmp_path / "m.tflite", format="full_int8", representative_data=rep
        )
    msg = e.value.message
    assert "STRIDED_SLICE" in msg and "failed to prepare" in msg
    assert "format='int8' keeps float activations" in msg


def test_full_int8_refuses_a_codebook_embedding(tmp_path):
    inp = keras.Input((5,), dtype="int32")
    x = L.Flatten()(L.Embedding(50, 4, name="embedding")(inp))
    qat = td.quantize_model(keras.Model(inp, L.Dense(2, name="logits")(x)), td.ternary())
    ids = np.random.default_rng(0).integers(0, 50, (4, 5)).astype(np.int32)
    with pytest.raises(tflite_export.ExportError) as e:
        tflite_export.export(
            qat, tmp_path / "m.tflite", format="full_int8", representative_data=ids
        )
    first = e.value.message.splitlines()[0]
    assert "'embedding' (Embedding)" in first and "GATHER" in first and "format='int8'" in first


@pytest.fixture(scope="module")
def trained_sequence_model():
    """A QAT model from `quantize_model` with recurrent and attention layers
    (LayerNormalization's gamma off 1, as after training)."""
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((4, 6))
    x = L.LSTM(8, return_sequences=True, name="lstm")(x)
    x = L.LayerNormalization(name="norm", gamma_initializer="random_uniform")(x)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.GRU(4, name="gru")(x)
    qat = td.quantize_model(keras.Model(inp, L.Dense(3, name="logits")(x)), td.ternary())
    return qat, _inputs(qat, 8, 1)[0]


@pytest.mark.parametrize("fmt", ["int4", "tflm_packed"])
def test_quantized_sequence_model_exports_exactly(trained_sequence_model, fmt, tmp_path):
    qat, data = trained_sequence_model
    report = tflite_export.export(qat, tmp_path / "m.tflite", format=fmt, representative_data=data)
    names = {w.name for w in report.weights}
    assert names == {
        "lstm/kernel",
        "lstm/recurrent_kernel",
        "mha/query/kernel",
        "mha/key/kernel",
        "mha/value/kernel",
        "mha/attention_output/kernel",
        "gru/kernel",
        "gru/recurrent_kernel",
        "logits/kernel",
    }
    assert report.ok and report.exact
    assert all(w.stored_bits <= 4 for w in report.weights)


def test_int8_activation_training_with_recurrent_layers_calibrates(tmp_path):
    # A form `activations="int8"` keeps a float state in (a dropout in the
    # cell): its file's ranges are calibrated (`test_recurrent_int8` for the others).
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 2))
    lstm = L.LSTM(4, dropout=0.1, name="lstm")
    model = keras.Model(inp, L.Dense(2, name="logits")(lstm(inp)))
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    data = _inputs(qat, 8, 1)[0]
    qat.predict(data, verbose=0)
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=data
    )
    assert report.ok and report.exact
    assert {w.name for w in report.weights} >= {"lstm/kernel", "lstm/recurrent_kernel"}
    assert any("calibrated on representative_data" in n for n in report.notes)


def test_gru_with_reset_gate_before_exports_full_int8_exactly(tmp_path):
    """A `GRU(reset_after=False)` applies the reset gate to the state before
    the candidate's product with the recurrent kernel, so its cell cuts that
    kernel (its conversion copy cuts both kernels per gate): each piece is a
    tensor of the file, and every stored value of every piece is checked."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 2))
    x = L.GRU(3, reset_after=False, name="gru")(inp)
    qat = td.quantize_model(keras.Model(inp, L.Dense(2, name="logits")(x)), td.ternary())
    data = _inputs(qat, 8, 1)[0]
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=data
    )
    pieces = [f"gru/{k}[{g}]" for k in ("kernel", "recurrent_kernel") for g in "zrh"]
    assert [w.name for w in report.weights] == [*pieces, "logits/kernel"]
    assert report.ok and report.exact and all(w.exact for w in report.weights)
    count = {w.name: w.count for w in report.weights}
    assert sum(count[p] for p in pieces[:3]) == 2 * 9  # kernel (2, 9)
    assert sum(count[p] for p in pieces[3:]) == 3 * 9  # recurrent kernel (3, 9)


def test_gate_cuts_are_those_of_the_conversion_copy():
    """What `codebook_weights` looks for is what the unrolled copy reads:
    a recurrent dropout (which makes a cell cut its kernels per gate) is
    dropped, a GRU with the reset gate before runs its kernels per gate."""
    x = inp = keras.Input((3, 2))
    x = L.Bidirectional(L.GRU(2, reset_after=False, return_sequences=True), name="bi")(x)
    x = L.LSTM(2, recurrent_dropout=0.1, return_sequences=True, name="lstm")(x)
    x = L.GRU(2, implementation=1, name="gru")(x)
    model = keras.Model(inp, x)
    copy = {layer.name: layer for layer in sequence.conversion_model(model).layers}
    assert copy["lstm"].implementation == 2 and copy["lstm"].recurrent_dropout == 0
    assert copy["gru"].implementation == 2
    assert copy["bi"].forward_layer.implementation == 1
    assert copy["bi"].backward_layer.implementation == 1
    bi = model.get_layer("bi")
    assert sequence.gate_cuts(bi, "backward/recurrent_kernel") == (("z", 2), ("r", 2), ("h", 2))
    assert sequence.gate_cuts(bi, "forward/bias") == ()
    for name in ("lstm", "gru"):
        assert sequence.gate_cuts(model.get_layer(name), "kernel") == ()
    a = np.arange(12.0).reshape(2, 6)
    pieces = sequence.gate_pieces(bi, "forward/kernel", a)
    assert [g for g, _ in pieces] == ["z", "r", "h"]
    np.testing.assert_array_equal(np.concatenate([p for _, p in pieces], -1), a)


def _operators(data: bytes) -> list[str]:
    """The names of a file's operators, in order."""
    fb = exact.read(data)
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [codes[fb.operatorCodes[op.opcodeIndex].builtinCode] for op in fb.subgraphs[0].operators]


def test_full_int8_conversion_is_the_same_every_time():
    """Unrolled with `implementation=2`, each step of a `GRU(reset_after=False)`
    split off an empty gate part that nothing reads (its conversion copy now
    runs `implementation=1`). The converter's quantizer left such a SPLIT_V
    in float32 between a DEQUANTIZE and QUANTIZEs on some runs and not on
    others: files of 8 to 14 QUANTIZE operators, none two alike in 8 runs."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 3))
    model = keras.Model(inp, L.Dense(2)(L.GRU(4, reset_after=False)(inp)))
    plain = sequence.conversion_model(model)
    rep = _inputs(model, 8, 1)
    first, second = (convert.full_int8_tflite(plain, zip(*rep)) for _ in range(2))
    assert first == second
    ops = _operators(first)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops


def test_tflm_packed_report_quotes_the_full_int8_file_size(tmp_path):
    """A full_int8 export and the full_int8 file a tflm_packed export reports
    are one file: unrolled, the LSTM's first step and the GRU's (recurrent
    bias zero) split off a gate that nothing reads."""
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((3, 2))
    x = L.LSTM(4, return_sequences=True, name="lstm")(x)
    x = L.GRU(4, name="gru")(x)
    qat = td.quantize_model(keras.Model(inp, L.Dense(3, name="logits")(x)), td.ternary())
    data = _inputs(qat, 8, 1)[0]
    full = tflite_export.export(
        qat, tmp_path / "f.tflite", format="full_int8", representative_data=data
    )
    packed_report = tflite_export.export(
        qat, tmp_path / "p.tflite", format="tflm_packed", representative_data=data
    )
    written = (tmp_path / "f.tflite").read_bytes()
    assert packed_report.full_int8_size_bytes == full.size_bytes == len(written)
    assert "DEQUANTIZE" not in _operators(written)
