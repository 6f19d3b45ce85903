"""An LSTM or GRU fake-quantized at every tensor its full-integer file quantizes, against that file.

    python -m benchmarks.recurrent_int8 [--epochs 12] [--seeds 0 1 2] [--models lstm gru]

The measurement behind `tfmot_discrete.tfk.recurrent` (which trains such
layers with `activations="int8"`; `benchmarks.agreement` measures it): a
full-integer file of a plain recurrent layer converts from an unrolled copy
whose gates, cell state and hidden state get calibrated 8-bit ranges, which
the Keras model never computed with. This benchmark builds, on its own, the
Keras model that does compute with them (ranges recorded once on the
training data, not trained), and checks that its file runs the same integers:

- the float model is the sequence benchmark's LSTM or GRU (`sequence.lstm`,
  `sequence.gru`: Conv1D -> LSTM(64) or GRU(64) -> Dense(10)), trained
  `--epochs` passes; every kernel
  is put on its per-channel int8 grid (`max|w| / 127`), so that Keras and
  the converter hold the same weights;
- `calibrated`: that model exported by `tflite_export.export(...,
  format="full_int8")` with 256 training signals, as a user's LSTM is today;
- `fake-quantized`: the same weights in a Keras model that unrolls the LSTM
  step by step and fake-quantizes (`tf.quantization.fake_quant_with_min_max_*`)
  every tensor the file quantizes: the input and recurrent products, their
  sum, the gates (sigmoid outputs on `[0, 255/256]`, tanh outputs on
  `[-1, 127/128]`: the fixed scales of int8 LOGISTIC and TANH), `f * c`,
  `i * g`, the cell state, `tanh(c)` and the hidden state (a GRU's: the
  gate sums, `r * (h @ U_h + b)`, `z * h`, `1 - z`, `(1 - z) * h~` and the
  hidden state; Keras's `reset_after=True`), one range per
  tensor shared by every step (min and max over the 4,000 training signals,
  recorded with only the fixed sigmoid and tanh ranges applied), and the
  convolution's and the logits' outputs. Converted with
  TFLite's converter from those ranges (no calibration, batch of one).

Each file is run by LiteRT (and TFLM's Python interpreter, for the top-1
agreement) on the 1,000 test signals and compared with its own Keras model:
top-1 agreement, the share of outputs more than half an output step apart
and the largest difference in output steps. Prints a
Markdown section for benchmarks/RESULTS.md.

`--ops`: one-operator files (LOGISTIC, TANH, MUL, ADD with the ranges such
cells have) run by LiteRT and TFLM against fake quantization, code by code.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from benchmarks import agreement, common, sequence
from tflite_export import runners
from tflite_export.logs import library_logs

keras = td.keras
L = keras.layers

#: The fixed output ranges of int8 LOGISTIC (scale 1/256, zero point -128) and TANH (1/128, 0).
SIGMOID_RANGE, TANH_RANGE = (0.0, 255 / 256), (-1.0, 127 / 128)
#: The tensors of one LSTM step with a range of their own (shared by every step).
POINTS = ("xw", "hu", "z", "fc", "ig", "c", "h")
#: The same for a GRU step (Keras's gate order z, r, h; `reset_after=True`).
GRU_POINTS = ("xw", "hu", "sz", "sr", "rh", "sh", "zh", "omz", "omzh", "h")


class Ranged(L.Layer):
    """Holds min/max variables; `calibrating`: records them, else fake-quantizes."""

    calibrating = True

    def _range(self, name):
        lo = self.add_weight(name=f"{name}_min", shape=(), initializer="zeros", trainable=False)
        hi = self.add_weight(name=f"{name}_max", shape=(), initializer="zeros", trainable=False)
        return lo, hi

    def quantize(self, x, rng):
        lo, hi = rng
        if self.calibrating:
            lo.assign(tf.minimum(lo, tf.reduce_min(x)))
            hi.assign(tf.maximum(hi, tf.reduce_max(x)))
            return x
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)


class RangeFakeQuant(Ranged):
    """One tensor fake-quantized on its recorded range."""

    def build(self, input_shape):
        self.rng = self._range("output")

    def call(self, x):
        return self.quantize(x, self.rng)


class FakeQuantLSTM(Ranged):
    """An LSTM (Keras's gate order i, f, c, o; sigmoid and tanh) unrolled step
    by step, every tensor the full-integer file quantizes fake-quantized."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        f, u = input_shape[-1], self.units
        self.kernel = self.add_weight(name="kernel", shape=(f, 4 * u))
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(u, 4 * u))
        self.bias = self.add_weight(name="bias", shape=(4 * u,))
        self.ranges = {p: self._range(p) for p in POINTS}

    def _fixed(self, x, rng):
        return tf.quantization.fake_quant_with_min_max_args(x, *rng, num_bits=8)

    def call(self, x):
        q, r = self.quantize, self.ranges
        h = tf.zeros((tf.shape(x)[0], self.units))
        c = tf.zeros_like(h)
        for t in range(x.shape[1]):
            xw = q(tf.matmul(x[:, t], self.kernel) + self.bias, r["xw"])
            hu = q(tf.matmul(h, self.recurrent_kernel), r["hu"])
            z = tf.split(q(xw + hu, r["z"]), 4, axis=1)
            i, f, o = (self._fixed(tf.sigmoid(z[k]), SIGMOID_RANGE) for k in (0, 1, 3))
            g = self._fixed(tf.tanh(z[2]), TANH_RANGE)
            c = q(q(f * c, r["fc"]) + q(i * g, r["ig"]), r["c"])
            h = q(o * self._fixed(tf.tanh(c), TANH_RANGE), r["h"])
        return h


class FakeQuantGRU(FakeQuantLSTM):
    """A GRU (`reset_after=True`, Keras's gate order z, r, h) unrolled step by
    step, every tensor the full-integer file quantizes fake-quantized."""

    def build(self, input_shape):
        f, u = input_shape[-1], self.units
        self.kernel = self.add_weight(name="kernel", shape=(f, 3 * u))
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(u, 3 * u))
        self.bias = self.add_weight(name="bias", shape=(2, 3 * u))
        self.ranges = {p: self._range(p) for p in GRU_POINTS}

    def call(self, x):
        q, r = self.quantize, self.ranges
        h = tf.zeros((tf.shape(x)[0], self.units))
        for t in range(x.shape[1]):
            xz, xr, xh = tf.split(q(tf.matmul(x[:, t], self.kernel) + self.bias[0], r["xw"]), 3, 1)
            hz, hr, hh = tf.split(
                q(tf.matmul(h, self.recurrent_kernel) + self.bias[1], r["hu"]), 3, axis=1
            )
            z = self._fixed(tf.sigmoid(q(xz + hz, r["sz"])), SIGMOID_RANGE)
            reset = self._fixed(tf.sigmoid(q(xr + hr, r["sr"])), SIGMOID_RANGE)
            cand = self._fixed(tf.tanh(q(xh + q(reset * hh, r["rh"]), r["sh"])), TANH_RANGE)
            keep = q(z * h, r["zh"])
            h = q(keep + q(q(1.0 - z, r["omz"]) * cand, r["omzh"]), r["h"])
        return h


def on_int8_grid(model) -> None:
    """Every kernel of `model` on its per-output-channel int8 grid (in place)."""
    for w in model.weights:
        if "kernel" in w.name:
            a = w.numpy()
            s = channel_step(a)
            w.assign((np.round(a / s) * s).astype(np.float32))


def channel_step(kernel: np.ndarray) -> np.ndarray:
    """The per-output-channel int8 step of a kernel (`max|w| / 127`; 1 for zeros)."""
    s = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127
    return np.where(s == 0, 1, s)


def fake_quantized(float_model, x_calibration):
    """The fake-quantized twin of `sequence.lstm()`'s or `sequence.gru()`'s
    trained model, ranges recorded."""
    conv, lstm, dense = (
        next(layer for layer in float_model.layers if isinstance(layer, cls))
        for cls in (L.Conv1D, (L.LSTM, L.GRU), L.Dense)
    )
    inp = keras.Input(float_model.input_shape[1:])
    x = RangeFakeQuant(name="input_fq")(inp)
    x = RangeFakeQuant(name="conv_fq")(
        L.Conv1D.from_config({**conv.get_config(), "name": "conv"})(x)
    )
    cell = (FakeQuantGRU if isinstance(lstm, L.GRU) else FakeQuantLSTM)(lstm.units, name="lstm_fq")
    x = cell(x)
    dense_fq = L.Dense.from_config({**dense.get_config(), "name": "logits"})
    model = keras.Model(inp, RangeFakeQuant(name="logits_fq")(dense_fq(x)))
    model.get_layer("conv").set_weights(conv.get_weights())
    dense_fq.set_weights(dense.get_weights())
    cell.set_weights(lstm.get_weights() + [w.numpy() for w in cell.weights[3:]])
    for start in range(0, len(x_calibration), 500):
        model(x_calibration[start : start + 500], training=False)
    for layer in model.layers:
        if isinstance(layer, Ranged):
            layer.calibrating = False
    return model


def range_step(rng) -> float:
    """The 8-bit step of a fake-quantized range (TensorFlow's nudging keeps it)."""
    lo, hi = (float(v.numpy()) for v in rng)
    return (hi - lo) / 255


def _on_grid(bias, kernel, step_in):
    """`bias` on the int32 grid of `step_in` x `kernel`'s per-channel int8 step."""
    grid = step_in * channel_step(kernel.numpy())
    return (np.round(bias / grid) * grid).astype(np.float32)


def biases_on_grid(model) -> None:
    """Each bias of `fake_quantized`'s model on the int32 grid its file adds it
    on (input step x the kernel's per-channel step), in place; a GRU's
    recurrent bias on the hidden state's step x the recurrent kernel's."""
    conv, cell, dense = (model.get_layer(n) for n in ("conv", "lstm_fq", "logits"))
    step_h = range_step(cell.ranges["h"])
    conv.bias.assign(
        _on_grid(conv.bias.numpy(), conv.kernel, range_step(model.get_layer("input_fq").rng))
    )
    step_x = range_step(model.get_layer("conv_fq").rng)
    b = cell.bias.numpy()
    if isinstance(cell, FakeQuantGRU):
        b = np.stack(
            [_on_grid(b[0], cell.kernel, step_x), _on_grid(b[1], cell.recurrent_kernel, step_h)]
        )
    else:
        b = _on_grid(b, cell.kernel, step_x)
    cell.bias.assign(b)
    dense.bias.assign(_on_grid(dense.bias.numpy(), dense.kernel, step_h))


def int8_file(model) -> bytes:
    """A Keras model with fake-quant ops as a full-integer file, from their ranges."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def converted(model) -> bytes:
    """The fake-quantized model as a full-integer file (its own ranges, batch of one)."""
    inp = keras.Input(model.input_shape[1:], batch_size=1)
    return int8_file(keras.Model(inp, model(inp)))


def compare(data: bytes, keras_out, x) -> dict:
    got = runners.run_litert(data, [x])[0]
    it = runners.interpreter(data)
    off = np.abs(got - keras_out) / it.get_output_details()[0]["quantization"][0]
    floats = sum(t["dtype"] == np.float32 for t in it.get_tensor_details())
    tflm = runners.run_tflm(data, [x], dequantize=True)[0].reshape(keras_out.shape)
    return {
        "agree": float(np.mean(np.argmax(got, -1) == np.argmax(keras_out, -1))),
        "tflm_agree": float(np.mean(np.argmax(tflm, -1) == np.argmax(keras_out, -1))),
        "off": float(np.mean(off > 0.5)),
        "largest": float(off.max()),
        "float_tensors": int(floats),
    }


MODELS = {"lstm": sequence.lstm, "gru": sequence.gru}

#: One-operator files: (operator, range of each input, output range).
OPS = (
    ("LOGISTIC", [(-8.0, 8.0)], SIGMOID_RANGE),
    ("LOGISTIC", [(-5.6, 8.2)], SIGMOID_RANGE),
    ("TANH", [(-8.0, 8.0)], TANH_RANGE),
    ("TANH", [(-3.0, 2.0)], TANH_RANGE),
    ("MUL", [SIGMOID_RANGE, TANH_RANGE], (-0.97, 0.99)),
    ("MUL", [SIGMOID_RANGE, (-7.9, 8.7)], (-7.4, 8.0)),
    ("ADD", [(-7.4, 8.0), (-0.97, 0.99)], (-7.9, 8.7)),
    ("ADD", [(-3.96, 7.28), (-5.5, 6.6)], (-5.6, 8.2)),
)
#: Pairs of input codes per two-input operator (TFLM's test arena holds 2,048).
OP_SAMPLES = 2048


def _one_op(op, ranges, out_range):
    """A Keras model of one fake-quantized operator, and its full-integer file."""
    fq = tf.quantization.fake_quant_with_min_max_args
    fns = {"LOGISTIC": tf.sigmoid, "TANH": tf.tanh, "MUL": tf.multiply, "ADD": tf.add}
    n = 256 if len(ranges) == 1 else OP_SAMPLES
    inputs = [keras.Input((n,), batch_size=1, name=f"in{k}") for k in range(len(ranges))]
    xs = [L.Lambda(lambda t, r=r: fq(t, *r))(i) for i, r in zip(inputs, ranges, strict=True)]
    out = L.Lambda(lambda ts: fq(fns[op](*ts), *out_range))(xs)
    model = keras.Model(inputs, out)
    return model, int8_file(model)


def op_rounding(seed=0) -> list:
    """Per one-operator file: codes of LiteRT and TFLM that differ from the
    Keras model's fake quantization, over every input code (one input) or
    `OP_SAMPLES` random pairs of codes (two)."""
    rng = np.random.default_rng(seed)
    rows = []
    for op, ranges, out_range in OPS:
        model, data = _one_op(op, ranges, out_range)
        it = runners.interpreter(data)
        details = it.get_input_details()
        n = 256 if len(ranges) == 1 else OP_SAMPLES
        codes = [np.arange(-128, 128)] if n == 256 else [rng.integers(-128, 128, n) for _ in ranges]
        # The file's inputs by the Keras input names ("in0", "in1"), whatever their order.
        index = it._get_full_signature_list()["serving_default"]["inputs"]  # noqa: SLF001
        position = {index[f"in{k}"]: k for k in range(len(codes))}
        xs = []
        for k, c in enumerate(codes):
            d = next(d for d in details if d["index"] == index[f"in{k}"])
            s_, z_ = d["quantization"]
            xs.append(((c - z_) * s_).astype(np.float32)[None])
        file_xs = [xs[position[d["index"]]] for d in details]
        want = model(xs).numpy()
        step = it.get_output_details()[0]["quantization"][0]
        lite = runners.run_litert(data, file_xs)[0]
        tflm = runners.run_tflm(data, file_xs, dequantize=True)[0]
        rows.append(
            (
                op,
                ranges,
                n,
                int(np.sum(np.abs(lite - want) > step / 2)),
                int(np.sum(np.abs(tflm - want) > step / 2)),
            )
        )
    return rows


def ops_table(rows) -> str:
    def rng(r):
        return f"[{r[0]:g}, {r[1]:.4g}]"

    table = [
        [op, ", ".join(map(rng, ranges)), str(n), str(a), str(b)] for op, ranges, n, a, b in rows
    ]
    head = ["operator", "input ranges", "inputs", "LiteRT codes off", "TFLM codes off"]
    return common.md_table(head, table)


def run(epochs, seeds, models=("lstm",), log=print) -> list:
    xtr, ytr, xte, yte = agreement.data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in ((m, s) for m in models for s in seeds):
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            fm = MODELS[name]()
            sequence.fit(fm, xtr, ytr, epochs, 0.0, seed)
            on_int8_grid(fm)
            path = pathlib.Path(tmp) / "calibrated.tflite"
            tflite_export.export(fm, path, format="full_int8", representative_data=xtr[:256])
            keras_out = fm.predict(xte, batch_size=256, verbose=0)
            calibrated = compare(path.read_bytes(), keras_out, xte)
            fq = fake_quantized(fm, xtr)
            fq_out = fq.predict(xte, batch_size=250, verbose=0)
            trained = compare(converted(fq), fq_out, xte)
            biases_on_grid(fq)
            fq_out = fq.predict(xte, batch_size=250, verbose=0)
            aligned = compare(converted(fq), fq_out, xte)
            acc = float(np.mean(np.argmax(keras_out, -1) == yte))
            fq_acc = float(np.mean(np.argmax(fq_out, -1) == yte))
            rows.append((name, seed, acc, fq_acc, calibrated, trained, aligned))
            log(
                f"{name} seed {seed}: calibrated {calibrated}, fake-quantized {trained}, aligned {aligned}"
            )
    return rows


VARIANTS = ("calibrated", "fake-quantized", "fake-quantized, biases on the int32 grid")


def section(rows, epochs, seeds) -> str:
    def pct(v):
        return f"{100 * v:.1f}"

    table = []
    for model, seed, acc, fq_acc, *files in rows:
        for name, rec in zip(VARIANTS, files, strict=True):
            table.append(
                [
                    model,
                    str(seed),
                    name,
                    pct(acc if name == "calibrated" else fq_acc),
                    pct(rec["agree"]),
                    pct(rec["tflm_agree"]),
                    pct(rec["off"]),
                    f"{rec['largest']:.0f}",
                    str(rec["float_tensors"]),
                ]
            )
    head = [
        "model",
        "seed",
        "Keras model and its file",
        "Keras model %",
        "top-1 agreement % (LiteRT)",
        "top-1 agreement % (TFLM)",
        "outputs > 1/2 step off % (LiteRT)",
        "largest difference (steps)",
        "float32 tensors in the file",
    ]
    summary = "; ".join(
        f"{model} {name} {common.fmt_pct([r[4 + k]['agree'] for r in rows if r[0] == model])} %"
        for model in dict.fromkeys(r[0] for r in rows)
        for k, name in enumerate(VARIANTS)
    )
    return (
        "## Recurrent layers fake-quantized where their file quantizes\n\n"
        f"`python -m benchmarks.recurrent_int8 --epochs {epochs} --seeds "
        f"{' '.join(map(str, seeds))} --models {' '.join(dict.fromkeys(r[0] for r in rows))}`. "
        f"{common.environment_line()}\n\n"
        + common.md_table(head, table)
        + f"\n\nTop-1 agreement with its own Keras model, mean ± std: {summary}.\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    p.add_argument(
        "--ops", action="store_true", help="only the one-operator files against fake quantization"
    )
    args = p.parse_args(argv)
    if args.ops:
        with library_logs(verbose=False):
            rows = op_rounding()
        print(ops_table(rows))
        return 0
    with library_logs(verbose=False):
        rows = run(args.epochs, args.seeds, args.models, log=lambda m: print(m, flush=True))
    print(section(rows, args.epochs, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
