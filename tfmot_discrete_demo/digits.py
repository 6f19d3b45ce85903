"""The main job: one MLP on scikit-learn's digits, trained five ways.

Float first; then the usual answer's `inputs * tf.math.sign(kernel)` (zero
gradient, so it does not learn); then binary, ternary and `[1, -1, 0.5, -0.5]`
weights through `quantize_model`, each fine-tuned from the trained float model
with the library's recipe: 10 % linear warmup, cosine decay, then
`recalibrate_batchnorm`. Prints one line per variant while it trains, then an
accuracy table, `summary` and the exported files.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tflite_export import runners
from tfmot_discrete import keras
from tfmot_discrete.core import text


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


#: Peak learning rate of the float model; fine-tuning uses `FINETUNE_LR_FACTOR` x it.
LR = 3e-3
#: Fine-tuning from float: peak lr relative to the float model's, share of the
#: steps in linear warmup (the recipe measured in `benchmarks/accuracy.py`).
FINETUNE_LR_FACTOR = 1.0
WARMUP = 0.1
BATCH = 64

VARIANTS = {
    "float": None,
    "seed answer: tf.math.sign": "sign",
    "binary {-1,+1} x mean|w|": td.binary(scale="mean_abs"),
    "ternary {-1,0,+1} x mean|w|": td.ternary(scale="mean_abs"),
    # Values exactly as given where a BatchNormalization follows (the trained
    # weights are rescaled into the codebook); the logits, with none after
    # them, take a per-channel mean|w| scale.
    "[1, -1, 0.5, -0.5]": {
        "logits": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
        ".*": td.CodebookQuantizer([1, -1, 0.5, -0.5]),
    },
}
FOUR_VALUES = "[1, -1, 0.5, -0.5]"


@dataclasses.dataclass
class Result:
    """One variant: test accuracy of the trained model (and of its stripped copy)."""

    accuracy: float
    seconds: float
    start: str  # "scratch" or "float"
    epochs: int
    stripped_accuracy: float | None = None


def build_variant(spec, seed: int, float_model=None):
    """The model of one variant: float or the seed's sign net from scratch, or
    `quantize_model(float_model, spec)` (a fresh float net without `float_model`)."""
    keras.utils.set_random_seed(seed)
    if spec == "sign":
        return digits_mlp(dense=lambda units, name: SignDense(units, name=name), batch_norm=True)
    if spec is None:
        return digits_mlp(batch_norm=True)
    return td.quantize_model(float_model or digits_mlp(batch_norm=True), spec)


def learning_rate(peak: float, steps: int, warmup: float = 0.0):
    """Cosine decay to 0 over `steps`, after a linear warmup from 1 % of `peak`
    over the first `warmup` share of them."""
    warm = int(warmup * steps)
    if warm:
        return keras.optimizers.schedules.CosineDecay(
            peak * 0.01, max(1, steps - warm), warmup_target=peak, warmup_steps=warm
        )
    return keras.optimizers.schedules.CosineDecay(peak, max(1, steps))


def train_and_evaluate(
    model, data, epochs: int, seed: int, verbose: int = 0, lr: float = LR, warmup: float = 0.0
):
    """Adam with cosine decay (after `warmup`), then BatchNormalization statistics
    re-estimated with the model's (projected) weights; returns the test accuracy."""
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(seed)
    steps = epochs * -(-len(xtr) // BATCH)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(lr, steps, warmup)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(xtr, ytr, epochs=epochs, batch_size=BATCH, verbose=verbose, shuffle=True)
    td.recalibrate_batchnorm(model, xtr)
    _, acc = model.evaluate(xte, yte, verbose=0)
    return float(acc)


def _stripped_accuracy(qat, data) -> float:
    plain = td.strip_quantization(qat)
    logits = plain.predict(data[2], verbose=0, batch_size=512)
    return float((logits.argmax(1) == data[3]).mean())


def _file_accuracy(fmt: str, model_bytes: bytes, data) -> float:
    """Test accuracy of an exported file, on TFLM for `tflm_packed`, else on LiteRT."""
    run = runners.run_tflm if fmt == "tflm_packed" else runners.run_litert
    logits = run(model_bytes, [data[2]])[0]
    return float((logits.argmax(1) == data[3]).mean())


def export_table(qat, data, out_dir, float_accuracy: float, print_fn=print) -> list:
    """Exports `qat` in every format, each file verified; prints one row per format:
    its size against the float file, and its test accuracy against the float model."""
    out_dir = pathlib.Path(out_dir)
    rows = [
        (
            "format",
            "file",
            "bytes",
            "size vs float",
            "weights",
            "outputs vs Keras",
            "test acc",
            "vs float model",
        )
    ]
    reports = []
    for fmt in tflite_export.FORMATS:
        path = out_dir / f"digits_{fmt}.tflite"
        report = tflite_export.export(qat, path, format=fmt, representative_data=data[0][:256])
        acc = _file_accuracy(fmt, path.read_bytes(), data)
        reports.append((report, acc))
        rel = report.max_abs_diff / report.output_range
        rows.append(
            (
                fmt,
                str(path),
                f"{report.size_bytes:,}",
                "reference" if fmt == "float" else f"{report.size_ratio:.1f}x smaller",
                "exact" if report.exact else "INEXACT",
                f"max {rel:.1e} of range",
                f"{100 * acc:.2f} %",
                f"{100 * (acc - float_accuracy):+.2f} points",
            )
        )
    print_fn(text.table(rows))
    return reports


def _train_variant(label, spec, data, epochs, finetune_epochs, seed, verbose, float_model):
    """Trains one variant; returns (Result, model)."""
    t0 = time.perf_counter()
    if spec not in (None, "sign"):
        model = build_variant(spec, seed, float_model)
        acc = train_and_evaluate(
            model,
            data,
            finetune_epochs,
            seed,
            verbose,
            lr=LR * FINETUNE_LR_FACTOR,
            warmup=WARMUP,
        )
        result = Result(acc, time.perf_counter() - t0, "float", finetune_epochs)
        result.stripped_accuracy = _stripped_accuracy(model, data)
    else:
        model = build_variant(spec, seed)
        acc = train_and_evaluate(model, data, epochs, seed, verbose)
        result = Result(acc, time.perf_counter() - t0, "scratch", epochs)
    return result, model


def _progress_line(label: str, r: Result) -> str:
    start = "from scratch" if r.start == "scratch" else "from float"
    return (
        f"  {label:<28} {r.epochs:>3} epoch{'s' if r.epochs != 1 else ' '} {start:<12} "
        f"test {100 * r.accuracy:6.2f} %  {r.seconds:5.1f} s"
    )


def accuracy_table(results: dict) -> str:
    """The variants' test accuracy, its cost against float, and the stripped model's."""
    base = results["float"].accuracy
    rows = [("variant", "trained", "test accuracy", "vs float", "after strip", "train time")]
    for label, r in results.items():
        rows.append(
            (
                label,
                f"{r.epochs} ep. " + ("from scratch" if r.start == "scratch" else "from float"),
                f"{100 * r.accuracy:.2f} %",
                "reference" if label == "float" else f"{100 * (r.accuracy - base):+.2f} points",
                "-" if r.stripped_accuracy is None else f"{100 * r.stripped_accuracy:.2f} %",
                f"{r.seconds:.1f} s",
            )
        )
    return text.table(rows)


def run(
    epochs: int = 30,
    seed: int = 0,
    verbose: int = 0,
    print_fn=print,
    out_dir=None,
    finetune_epochs: int | None = None,
) -> dict:
    """Trains every variant, prints one line each, then the tables.

    Args:
        epochs: Epochs of the float model (and of the sign net), from scratch.
        seed: Random seed (data split, initialization, data order).
        verbose: Keras' `fit` verbosity. Defaults to 0.
        print_fn: Where the lines go. Defaults to `print`.
        out_dir: Where the exported files go; None skips the export.
        finetune_epochs: Epochs of each codebook variant, from the trained float
            model. Defaults to half of `epochs` (at least 1).

    Returns:
        `{variant label: Result}`.
    """
    finetune_epochs = finetune_epochs or max(1, epochs // 2)
    data = load_digits_split(seed)
    n_train, n_test = len(data[1]), len(data[3])
    print_fn(
        f"Digits MLP (64-256-256-10, BatchNorm, ReLU), {n_train} train / {n_test} test "
        f"images, seed {seed}. Training:"
    )
    results, models = {}, {}
    for label, spec in VARIANTS.items():
        results[label], models[label] = _train_variant(
            label, spec, data, epochs, finetune_epochs, seed, verbose, models.get("float")
        )
        print_fn(_progress_line(label, results[label]))
    print_fn(
        f"\nFloat: Adam, lr {LR:g} with cosine decay, then BatchNorm statistics re-estimated. "
        f"Codebook variants: quantize_model(float model), {finetune_epochs} "
        f"epoch{'s' if finetune_epochs != 1 else ''}, "
        f"peak lr {LR * FINETUNE_LR_FACTOR:g}, {WARMUP:.0%} warmup, cosine decay, "
        "td.recalibrate_batchnorm."
    )
    print_fn(accuracy_table(results))
    four = models[FOUR_VALUES]
    print_fn("")
    td.summary(four, print_fn=print_fn)
    if out_dir is not None:
        print_fn(
            f"\n{FOUR_VALUES} model exported, each file verified and run on the "
            f"{n_test} test images (LiteRT; TFLM for tflm_packed):"
        )
        export_table(four, data, out_dir, results["float"].accuracy, print_fn=print_fn)
    return results
