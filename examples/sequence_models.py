"""A GRU and a small attention model on MNIST-1D read as a sequence, ternary, to int4 and full_int8.

Each MNIST-1D signal (40 samples) goes through a strided Conv1D front end
(20 steps of 32 features), then:

- `gru`: a GRU(64) whose last state feeds the logits;
- `attention`: one self-attention block (MultiHeadAttention, 2 heads of 16,
  residual, LayerNormalization, a Dense(32) per step), flattened into the logits.

The recipe of docs/guide.md: train float (Adam, cosine decay from `PEAK_LR`),
then `td.quantize_model` with the front end and the logits at `"int8"` and
every other weight ternary (the GRU's kernel and recurrent kernel; the
attention's query, key, value and output projections and the per-step Dense),
fine-tuned as many epochs with `td.finetune_schedule` at the float peak
learning rate. There is no BatchNormalization, so nothing to re-estimate.
Both are exported to `int4` (weights only: LiteRT must score the file as
Keras scores the model) and `full_int8` (int8 activations too, what TFLM
runs; its accuracy may move by a few test signals). The GRU is unrolled into
one FULLY_CONNECTED per step at batch 1 by the exporter (docs/layers.md).

    python examples/sequence_models.py [--epochs 30] [--out out/sequence]

With the defaults (seed 0, 2 cores, about a minute and a half): GRU float
95.50 %, ternary 96.30 % in Keras and in the int4 file, 96.50 % in the
full_int8 file; attention float 90.10 %, ternary 91.80 % (int4 file the
same), 91.90 % in the full_int8 file.
"""

from __future__ import annotations

import math
import pathlib

import _cli
import numpy as np
from _data import mnist1d

import tflite_export

with _cli.quiet_imports():  # TensorFlow loads here (on first use of td.keras)
    import tfmot_discrete as td

    keras = td.keras
L = keras.layers

#: The float training's peak learning rate and batch size; fine-tuning reuses both.
PEAK_LR, BATCH = 5e-3, 100


def front_end(inp):
    return L.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="conv_0")(inp)


def gru() -> keras.Model:
    inp = keras.Input((40, 1), name="signal")
    x = L.GRU(64, name="gru")(front_end(inp))
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_gru")


def attention() -> keras.Model:
    inp = keras.Input((40, 1), name="signal")
    x = front_end(inp)
    a = L.MultiHeadAttention(2, 16, name="mha")(x, x)
    x = L.LayerNormalization(name="norm")(L.Add(name="residual")([x, a]))
    x = L.Flatten(name="flatten")(L.Dense(32, activation="relu", name="ffn")(x))
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_attention")


def compile_and_fit(model, xtr, ytr, epochs, verbose, warmup):
    """Adam at `PEAK_LR` with `td.finetune_schedule` over `epochs`, then `fit`."""
    steps = epochs * math.ceil(len(ytr) / BATCH)
    model.compile(
        keras.optimizers.Adam(td.finetune_schedule(PEAK_LR, steps, warmup=warmup)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(xtr, ytr, epochs=epochs, batch_size=BATCH, verbose=2 if verbose else 0)


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a Keras model (inference mode)."""
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def one_model(build, data, args) -> bool:
    """Float, ternary, two files; True when both files verified exact and int4 scores as Keras."""
    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(0)
    model = build()
    compile_and_fit(model, xtr, ytr, args.epochs, args.verbose, warmup=0.0)
    float_acc = accuracy(model, xte, yte)

    qat = td.quantize_model(model, {"conv_0": "int8", "logits": "int8", ".*": td.ternary()})
    compile_and_fit(qat, xtr, ytr, args.epochs, args.verbose, warmup=0.1)
    qat_acc = accuracy(qat, xte, yte)
    name = model.name
    print(
        f"{name}: float {float_acc:.2%} -> ternary {qat_acc:.2%} "
        f"({100 * (qat_acc - float_acc):+.2f} points)"
    )
    td.summary(qat)

    ok = True
    for fmt in ("int4", "full_int8"):
        path = pathlib.Path(args.out) / f"{name}_{fmt}.tflite"
        report = tflite_export.export(qat, path, format=fmt, representative_data=xtr[:200])
        print(report)
        file_acc = _cli.litert_accuracy(path, xte, yte)
        same = round(file_acc * len(yte)) == round(qat_acc * len(yte))
        print(
            f"{path}: LiteRT test accuracy {file_acc:.2%}, Keras {qat_acc:.2%}, "
            f"float {float_acc:.2%}" + (": the same as Keras" if same else "")
        )
        ok = ok and report.ok and report.exact and (same or fmt == "full_int8")
    return ok


def _run(args) -> int:
    data = mnist1d()
    print(
        f"MNIST-1D: {len(data[1])} training and {len(data[3])} test signals of length "
        f"{data[0].shape[1]}, read as sequences"
    )
    results = [one_model(build, data, args) for build in (gru, attention)]
    return 0 if all(results) else 1


def main(argv=None) -> int:
    return _cli.run(
        _cli.parser(
            __doc__, out="out/sequence", epochs=30, epochs_help="float and fine-tuning epochs"
        ),
        _run,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
