"""The main job: one MLP on scikit-learn's digits, trained six ways.

Float; the usual answer's `inputs * tf.math.sign(kernel)` (zero gradient, so
it does not learn); then binary, ternary and `[1, -1, 0.5, -0.5]` weights
through `quantize_model`. Prints an accuracy table and `summary`.
"""

from __future__ import annotations

import pathlib
import time

import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tflite_export import runners
from tfmot_discrete import text
from tfmot_discrete._keras import keras


def load_digits_split(seed: int = 0):
    """scikit-learn's bundled 8x8 digits: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return xtr, ytr.astype("int32"), xte, yte.astype("int32")


class SignDense(keras.layers.Layer):
    """The usual answer: `inputs @ tf.math.sign(kernel)`. Its gradient is zero."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            "kernel", shape=(input_shape[-1], self.units), initializer="glorot_uniform"
        )
        self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return tf.matmul(inputs, tf.math.sign(self.kernel)) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def digits_mlp(
    hidden: int = 256, dense=None, name: str = "digits_mlp", batch_norm: bool = False
) -> keras.Model:
    """64 -> hidden -> hidden -> 10 with ReLU (BatchNormalization optional)."""
    dense = dense or (lambda units, name: keras.layers.Dense(units, name=name))
    inp = keras.Input((64,), name="pixels")
    x = inp
    for i in range(2):
        x = dense(hidden, f"dense_{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
    out = dense(10, "logits")(x)
    return keras.Model(inp, out, name=name)


VARIANTS = {
    "float": None,
    "seed answer: tf.math.sign": "sign",
    "binary {-1,+1} x mean|w|": td.binary(scale="mean_abs"),
    "ternary {-1,0,+1} x mean|w|": td.ternary(scale="mean_abs"),
    "[1, -1, 0.5, -0.5]": td.CodebookQuantizer([1, -1, 0.5, -0.5]),
}


def build_variant(spec, seed: int):
    keras.utils.set_random_seed(seed)
    if spec == "sign":
        return digits_mlp(dense=lambda units, name: SignDense(units, name=name))
    model = digits_mlp()
    if spec is None:
        return model
    return td.quantize_model(model, spec)


def train_and_evaluate(model, data, epochs: int, seed: int, verbose: int = 1, lr: float = 3e-3):
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=verbose, shuffle=True)
    _, acc = model.evaluate(xte, yte, verbose=0)
    return float(acc)


def export_table(qat, data, out_dir, print_fn=print) -> list:
    """Exports `qat` in every format, each file verified; prints one row per format."""
    out_dir = pathlib.Path(out_dir)
    xtr, _, xte, yte = data
    rows = [("format", "file", "bytes", "vs float", "weights", "outputs vs Keras", "test acc")]
    reports = []
    for fmt in tflite_export.FORMATS:
        path = out_dir / f"digits_{fmt}.tflite"
        report = tflite_export.export(qat, path, format=fmt, representative_data=xtr[:256])
        logits = runners.run_litert(path.read_bytes(), [xte])[0]
        acc = float((logits.argmax(1) == yte).mean())
        reports.append((report, acc))
        rel = report.max_abs_diff / report.output_range
        rows.append(
            (
                fmt,
                str(path),
                f"{report.size_bytes:,}",
                f"{report.size_ratio:.2f}x smaller",
                "exact" if report.exact else "INEXACT",
                f"max {rel:.1e} of range",
                f"{100 * acc:.2f} %",
            )
        )
    print_fn(text.table(rows))
    return reports


def run(epochs: int = 30, seed: int = 0, verbose: int = 1, print_fn=print, out_dir=None) -> dict:
    data = load_digits_split(seed)
    results = {}
    last_qat = None
    for label, spec in VARIANTS.items():
        print_fn(f"\n== {label} ==")
        model = build_variant(spec, seed)
        t0 = time.perf_counter()
        acc = train_and_evaluate(model, data, epochs, seed, verbose)
        results[label] = (acc, time.perf_counter() - t0)
        if isinstance(spec, td.CodebookQuantizer):
            plain = td.strip_quantization(model)
            plain.compile(
                metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            _, stripped_acc = plain.evaluate(data[2], data[3], verbose=0)
            results[label] = (acc, results[label][1], float(stripped_acc))
            last_qat = model
    base = results["float"][0]
    rows = [("variant", "test accuracy", "vs float", "after strip", "train time")]
    for label, r in results.items():
        rows.append(
            (
                label,
                f"{100 * r[0]:.2f} %",
                f"{100 * (r[0] - base):+.2f}",
                f"{100 * r[2]:.2f} %" if len(r) > 2 else "-",
                f"{r[1]:.1f} s",
            )
        )
    n = len(data[3])
    print_fn(
        f"\nDigits MLP (64-256-256-10, ReLU), {epochs} epochs, seed {seed}, "
        f"{len(data[1])} train / {n} test images"
    )
    print_fn(text.table(rows))
    if last_qat is not None:
        print_fn("")
        td.summary(last_qat, print_fn=print_fn)
        if out_dir is not None:
            print_fn(
                f"\n[1, -1, 0.5, -0.5] model exported and verified with LiteRT ({n} test images):"
            )
            export_table(last_qat, data, out_dir, print_fn=print_fn)
    return results
