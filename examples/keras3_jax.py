"""Keras 3 on JAX: a trained float CNN fine-tuned to ternary weights, exported to a verified int4 file.

The recipe of `from_trained_model.py` in plain Keras 3, trained with JAX
(`KERAS_BACKEND=jax`, set below unless already set) on MNIST-1D:

1. train the float Conv1D CNN (Adam, cosine decay);
2. `td.quantize_model` with the first convolution and the logits at `"int8"`
   and every other layer ternary: a Keras 3 model comes back;
3. fine-tune it with a Keras 3 optimizer (Adam at the float peak learning
   rate, `td.finetune_schedule(..., keras3=True)`: 10 % warmup, cosine decay
   to 0), jit-compiled by JAX; `td.recalibrate_batchnorm` re-estimates the
   BatchNorm statistics;
4. export to `int4` (`tflite_export` takes the Keras 3 model as it is) and
   check that LiteRT scores the file as Keras scores the model.

    python examples/keras3_jax.py [--epochs 20] [--out out/keras3_jax]
"""

from __future__ import annotations

import math
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import _cli
import keras
import numpy as np
from _data import mnist1d

with _cli.quiet_imports():  # TensorFlow loads here
    import tfmot_discrete as td

BATCH = 128
PEAK_LR = 3e-3


def cnn():
    L = keras.layers
    inp = keras.Input((40, 1))
    x = inp
    for i in range(3):
        x = L.Conv1D(25, 5, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_cnn")


def train(model, x, y, epochs):
    steps = epochs * math.ceil(len(x) / BATCH)
    model.compile(
        keras.optimizers.Adam(td.finetune_schedule(PEAK_LR, steps, keras3=True)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)


def accuracy(logits, y):
    return float(np.mean(np.argmax(logits, -1) == y)) * 100


def _run(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    x, y, x_test, y_test = mnist1d()
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")

    model = cnn()
    train(model, x, y, args.epochs)
    print(f"float: test accuracy {accuracy(model.predict(x_test, verbose=0), y_test):.2f}%")

    qat = td.quantize_model(model, {"conv_0": "int8", "logits": "int8", ".*": td.ternary()})
    assert isinstance(qat, keras.Model)  # Keras 3, trained on this backend
    train(qat, x, y, args.epochs)
    td.recalibrate_batchnorm(qat, x, steps=40, batch_size=128)  # for the final weights
    keras_acc = accuracy(qat.predict(x_test, verbose=0), y_test)
    print(f"ternary (int8 edges): test accuracy {keras_acc:.2f}%")
    td.summary(qat)

    # tflite_export takes the Keras 3 model as it is; LiteRT scores the file.
    path = out / "keras3_jax.tflite"
    return _cli.export_and_score(
        qat, path, x_test, y_test, format="int4", representative_data=x[:64]
    )


def main(argv=None) -> int:
    parser = _cli.parser(__doc__, out="out/keras3_jax", epochs=20)
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
