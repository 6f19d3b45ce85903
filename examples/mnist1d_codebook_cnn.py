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

import pathlib

import _cli
from _data import mnist1d

with _cli.quiet_imports():  # TensorFlow loads here (on first use of td.keras)
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
    return _cli.export_and_score(
        qat, path, xte, yte, format="full_int8", representative_data=xtr[:200]
    )


def main(argv=None) -> int:
    return _cli.run(_cli.parser(__doc__, out="out/mnist1d", epochs=30), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
