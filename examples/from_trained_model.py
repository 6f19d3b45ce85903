"""From a trained float CNN to ternary weights, keeping the accuracy, to a verified int4 file.

The recipe of docs/guide.md, "From a trained model to codebook weights",
measured in benchmarks/RESULTS.md, step by step on the MNIST-1D CNN of the
benchmarks (three convolutions + BatchNormalization + ReLU, a linear
layer; written with Conv1D):

1. train the float model (Adam, cosine decay), or start from yours;
   its BatchNorm statistics re-estimated (`td.recalibrate_batchnorm`);
2. `td.sensitivity`: which layers lose most when quantized alone;
3. `td.quantize_model` with the first convolution and the logits at `"int8"`
   and every other layer ternary (`{-1, 0, +1}` times a per-channel scale);
4. fine-tune as many epochs as the float training, Adam at the float peak
   learning rate, `td.finetune_schedule` (10 % warmup, cosine decay to 0);
   `--distill` trains through `td.Distiller` with the float model as teacher;
5. `td.RecalibrateBatchNorm`: BatchNorm statistics re-estimated at the end;
6. export to `int4` (the narrowest format holding three values exactly) and
   check that LiteRT scores the file as Keras scores the model.

    python examples/from_trained_model.py [--epochs 30] [--out out/from_trained] [--distill]

With the defaults (seed 0, 2 cores, a few minutes): float 94.20 %; quantized
alone, the first convolution (5 weights per filter) loses 35.9 points, the
others 2.2 to 6.1; after fine-tuning, 95.70 % in Keras and in the int4 file.
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
PEAK_LR, BATCH = 1e-2, 100


def cnn() -> keras.Model:
    """Three convolutions (kernel 5, 3, 3; stride 2; 25 channels) with BatchNorm, then logits."""
    inp = keras.Input((40, 1), name="signal")
    x = inp
    for i, k in enumerate((5, 3, 3)):
        x = L.Conv1D(25, k, strides=2, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_cnn")


def compile_and_fit(model, xtr, ytr, epochs, verbose, warmup, callbacks=()):
    """Adam at `PEAK_LR` with `td.finetune_schedule` over `epochs`, then `fit`."""
    steps = epochs * math.ceil(len(ytr) / BATCH)
    model.compile(
        keras.optimizers.Adam(td.finetune_schedule(PEAK_LR, steps, warmup=warmup)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        xtr,
        ytr,
        epochs=epochs,
        batch_size=BATCH,
        verbose=2 if verbose else 0,
        callbacks=list(callbacks),
    )


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a Keras model (inference mode)."""
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def _run(args) -> int:
    out = pathlib.Path(args.out)
    xtr, ytr, xte, yte = mnist1d()
    print(f"MNIST-1D: {len(ytr)} training and {len(yte)} test signals of length {xtr.shape[1]}")

    # 1. The trained float model (replace with your own).
    keras.utils.set_random_seed(0)
    model = cnn()
    # The float training: cosine decay from a fresh initialization, no warmup.
    compile_and_fit(model, xtr, ytr, args.epochs, args.verbose, warmup=0.0)
    td.recalibrate_batchnorm(model, xtr)  # as the benchmark does for every row, float too
    float_acc = accuracy(model, xte, yte)
    print(f"float model: test accuracy {float_acc:.2%}")

    # 2. Which layers hurt when quantized alone (on held-out data; BatchNorm re-estimated).
    td.sensitivity(model, td.ternary(), (xte, yte), recalibration_data=xtr)

    # 3. First convolution and logits at 8 bits, the rest ternary.
    qat = td.quantize_model(model, {"conv_0": "int8", "logits": "int8", ".*": td.ternary()})

    # 4 and 5. Fine-tune with the recipe; re-estimate BatchNorm statistics at the end.
    recalibrate = td.RecalibrateBatchNorm(xtr)
    trained = td.Distiller(qat, teacher=model) if args.distill else qat
    compile_and_fit(trained, xtr, ytr, args.epochs, args.verbose, 0.1, [recalibrate])
    qat_acc = accuracy(qat, xte, yte)
    print(f"ternary model: test accuracy {qat_acc:.2%}")
    print(
        f"float {float_acc:.2%} -> ternary {qat_acc:.2%}: {100 * (qat_acc - float_acc):+.2f} points"
    )
    td.summary(qat)

    # 6. The narrowest exact file, scored by LiteRT.
    path = out / "from_trained.tflite"
    report = tflite_export.export(qat, path, format="int4")
    print(report)
    file_acc = _cli.litert_accuracy(path, xte, yte)
    same = round(file_acc * len(yte)) == round(qat_acc * len(yte))
    print(
        f"{path}: LiteRT test accuracy {file_acc:.2%}, Keras {qat_acc:.2%}: "
        + ("the same" if same else "DIFFERENT")
    )
    return 0 if report.ok and report.exact and same else 1


def main(argv=None) -> int:
    parser = _cli.parser(
        __doc__,
        out="out/from_trained",
        epochs=30,
        epochs_help="float training and fine-tuning epochs",
    )
    parser.add_argument("--distill", action="store_true", help="fine-tune through td.Distiller")
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
