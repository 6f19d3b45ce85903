"""An existing MLP made binary, written to an int4 TFLite file.

Starts from a trained float MLP on scikit-learn's bundled 8x8 digits (the
"existing model"), wraps every Dense layer so its kernel trains to
`{-1, +1} x mean|w|` per output channel (XNOR-Net), fine-tunes it while
`td.CodebookMonitor` reports value shares and flip rates, then writes an
`int4` file whose kernels are exactly the binary values and measures its
accuracy with the LiteRT interpreter.

    python examples/binary_digits_mlp.py [--epochs 15] [--out out/binary_digits]
"""

from __future__ import annotations

import pathlib

import _cli
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

with _cli.quiet_imports():  # TensorFlow loads here (on first use of td.keras)
    import tfmot_discrete as td

    keras = td.keras


def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return train_test_split(x, y.astype("int32"), test_size=0.2, random_state=0, stratify=y)


def existing_mlp() -> keras.Model:
    """The user's model: 64 -> 128 -> 128 -> 10."""
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(128, activation="relu", name="dense_0"),
            keras.layers.Dense(128, activation="relu", name="dense_1"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )


def compile_and_fit(model, x, y, epochs, callbacks=(), verbose=0):
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=verbose, callbacks=list(callbacks))


def _run(args) -> int:
    out = pathlib.Path(args.out)
    xtr, xte, ytr, yte = digits()
    keras.utils.set_random_seed(0)

    model = existing_mlp()
    compile_and_fit(model, xtr, ytr, args.epochs, verbose=2 * args.verbose)
    float_acc = model.evaluate(xte, yte, verbose=0)[1]
    print(f"float MLP: test accuracy {float_acc:.2%}")

    qat = td.quantize_model(model, td.binary(scale="mean_abs"))  # starts from the float weights
    monitor = td.CodebookMonitor(verbose=int(args.verbose))  # value shares and flip rates
    compile_and_fit(qat, xtr, ytr, args.epochs, callbacks=[monitor], verbose=2 * args.verbose)
    qat_acc = qat.evaluate(xte, yte, verbose=0)[1]
    print(f"binary MLP: test accuracy {qat_acc:.2%}")
    td.summary(qat)

    path = out / "binary_digits_mlp.tflite"
    return _cli.export_and_score(qat, path, xte, yte, format="int4", representative_data=xte[:64])


def main(argv=None) -> int:
    parser = _cli.parser(
        __doc__, out="out/binary_digits", epochs=15, epochs_help="epochs per phase"
    )
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
