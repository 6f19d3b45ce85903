"""A learnable vector whose entries are only +1 or -1, then only [1, -1, 0.5, -0.5].

The question: multiply the data by one learnable vector whose entries may
only be `+1` or `-1` (then only values of `[1, -1, 0.5, -0.5]`). Here a
hidden vector of that kind produced the targets, `y = x * hidden`; the layer
learns it back from `(x, y)` and the learned vector is printed next to the
hidden one. The model is then written to a `.tflite` file whose multiplier
is exactly those values, and checked.

    python examples/seed_multiplier.py [--epochs 20] [--out out/seed]
"""

from __future__ import annotations

import pathlib

import _cli
import numpy as np

import tflite_export

with _cli.quiet_imports():  # TensorFlow loads here (on first use of td.keras)
    import tfmot_discrete as td

    keras = td.keras  # tf_keras (Keras 2): what TF-MOT and this package use


def learn(values, dim: int, epochs: int, seed: int = 0, verbose: int = 0):
    """Learns a hidden vector drawn from `values`; returns (model, layer, hidden, x)."""
    rng = np.random.default_rng(seed)
    hidden = rng.choice(np.asarray(values, "float32"), size=dim)
    x = rng.normal(size=(2048, dim)).astype("float32")
    y = x * hidden

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(dim,))
    multiplier = td.DiscreteMultiplier(values, name="multiplier")
    model = keras.Model(inputs, multiplier(inputs))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=verbose)
    return model, multiplier, hidden, x


def show(values, learned, hidden) -> None:
    """Prints the learned vector above the hidden one, and how many entries match."""

    def fmt(v):
        return " ".join(f"{e:+g}".rjust(4) for e in v)

    print(f"codebook {sorted(float(v) for v in values)}")
    for start in range(0, len(hidden), 16):
        print(f"  learned [{start:2d}:] {fmt(learned[start : start + 16])}")
        print(f"  hidden  [{start:2d}:] {fmt(hidden[start : start + 16])}")
    used = sorted({float(v) for v in learned})
    print(
        f"  entries equal to the hidden vector: {int(np.sum(learned == hidden))}/{len(hidden)}; "
        f"values used: {used}"
    )


def _run(args) -> int:
    out = pathlib.Path(args.out)

    for values in ([1, -1], [1, -1, 0.5, -0.5]):
        model, multiplier, hidden, x = learn(
            values, args.dim, args.epochs, verbose=2 * args.verbose
        )
        learned = multiplier.quantized_kernel().numpy()
        print()
        show(values, learned, hidden)

    # The last model (four values) as a TFLite file: one MUL by a constant vector,
    # read back by the LiteRT interpreter and checked to be the learned values.
    path = out / "seed_multiplier.tflite"
    report = tflite_export.export(model, path, format="float", representative_data=x[:64])
    print()
    print(report)
    return 0 if report.ok and report.exact else 1


def main(argv=None) -> int:
    parser = _cli.parser(__doc__, out="out/seed", epochs=20)
    parser.add_argument("--dim", type=int, default=32, help="vector length (default 32)")
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
