"""A 1D CNN with BatchNormalization on MNIST-1D, weights in [1, -1, 0.5, -0.5], to full_int8.

MNIST-1D (Greydanus 2020) is generated offline by the `mnist1d` package:
4,000 training and 1,000 test signals of length 40, ten classes. Every
Conv1D and Dense kernel trains to `{±1, ±0.5}` times a per-channel scale.
The TFLite converter folds each BatchNormalization into the convolution
before it; that only changes each channel's scale, so the `full_int8` file
(int8 weights and activations, what microcontrollers and NPUs run) still
holds the four values exactly. A histogram of the latent weights is saved
next to it (`td.plot_weights`, needs matplotlib).

    python examples/mnist1d_codebook_cnn.py [--epochs 30] [--out out/mnist1d]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from _data import mnist1d

import tflite_export
from tflite_export.logs import library_logs

# TensorFlow loads here: its start-up lines are kept out too, unless --verbose.
with library_logs("--verbose" in sys.argv[1:]):
    import tfmot_discrete as td

keras = td.keras
L = keras.layers


def cnn() -> keras.Model:
    inp = keras.Input((40, 1), name="signal")
    x = inp
    for i, filters in enumerate((32, 32, 64)):
        x = L.Conv1D(filters, 5, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
        if i < 2:
            x = L.MaxPooling1D(2, name=f"pool_{i}")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_cnn")


def litert_accuracy(path, x, y) -> float:
    """Top-1 accuracy of a full_int8 `.tflite` file (int8 input and output) with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    hits = 0
    for xi, yi in zip(x, y):
        q = np.clip(np.round(xi / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        hits += int(np.argmax(it.get_tensor(out["index"])) == yi)
    return hits / len(y)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--out", default="out/mnist1d", help="output directory")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Keras' per-epoch output, and what TensorFlow, the converters and the "
        "interpreters log",
    )
    args = parser.parse_args(argv)
    with library_logs(args.verbose):
        return _run(args)


def _run(args) -> int:
    out = pathlib.Path(args.out)
    xtr, ytr, xte, yte = mnist1d()
    print(f"MNIST-1D: {len(ytr)} training and {len(yte)} test signals of length {xtr.shape[1]}")

    keras.utils.set_random_seed(0)
    four = td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs")
    qat = td.quantize_model(cnn(), four)
    qat.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    qat.fit(
        xtr,
        ytr,
        epochs=args.epochs,
        batch_size=64,
        verbose=2 * args.verbose,
        callbacks=[td.CodebookMonitor(verbose=int(args.verbose))],
    )
    print(f"QAT model: test accuracy {qat.evaluate(xte, yte, verbose=0)[1]:.2%}")
    td.summary(qat)
    try:
        print(f"latent weight histograms: {td.plot_weights(qat, out / 'weights.png')}")
    except ImportError as e:
        print(f"(no histograms: {e})")

    path = out / "mnist1d_cnn.tflite"
    report = tflite_export.export(qat, path, format="full_int8", representative_data=xtr[:200])
    print(report)
    print(f"{path}: LiteRT test accuracy {litert_accuracy(path, xte, yte):.2%}")
    return 0 if report.ok and report.exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
