"""Step 1 of 2: train a small ternary CNN on the digits and save the QAT model.

A Conv2D/BatchNormalization/ReLU network on scikit-learn's bundled 8x8
digits, every Conv2D and Dense kernel trained to `{-1, 0, +1}` times a
scale per output channel. Writes `qat.keras` (the QAT model, reloadable
inside `td.quantize_scope()`) and `data.npz` (calibration and test images).
`deploy.py` takes it from there.

    python examples/edge_deploy/train.py [--epochs 30] [--out out/edge]
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/, for _cli
import _cli

with _cli.quiet_imports():  # TensorFlow loads here
    import tfmot_discrete as td

keras = td.keras
L = keras.layers


def cnn() -> keras.Model:
    inp = keras.Input((8, 8, 1), name="image")
    x = inp
    for i, filters in enumerate((16, 32)):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
        x = L.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="digits_cnn")


def _run(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    xtr, xte, ytr, yte = train_test_split(
        x, y.astype("int32"), test_size=0.2, random_state=0, stratify=y
    )
    keras.utils.set_random_seed(0)
    qat = td.quantize_model(cnn(), td.ternary(scale="mean_abs"))
    qat.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    monitor = td.CodebookMonitor(verbose=0)  # shares and flip rates go into the history
    history = qat.fit(
        xtr, ytr, epochs=args.epochs, batch_size=32, verbose=2 * args.verbose, callbacks=[monitor]
    )
    last = {k: v[-1] for k, v in history.history.items()}
    print(
        f"trained {args.epochs} epochs: loss {last['loss']:.3f}, "
        f"conv_1/kernel flip rate in the last epoch {last['conv_1/kernel/flip_rate']:.2%}"
    )
    print(f"QAT model: Keras test accuracy {qat.evaluate(xte, yte, verbose=0)[1]:.2%}")
    td.summary(qat)
    qat.save(out / "qat.keras")
    np.savez(out / "data.npz", x_calibration=xtr[:256], x_test=xte, y_test=yte)
    print(f"saved {out / 'qat.keras'} and {out / 'data.npz'}")
    return 0


def main(argv=None) -> int:
    return _cli.run(_cli.parser(__doc__, out="out/edge", epochs=30), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
