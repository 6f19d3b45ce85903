"""A small KerasHub transformer classifier, ternary with 8-bit edges, exported to a verified int8 file.

KerasHub's layers are not built-in Keras layers: `td.quantize_model` walks into
them and puts every Dense and EinsumDense kernel of the attention and the
feed-forward block on the codebook, and `tflite_export` converts the model
natively (Keras's `ExportArchive`, builtin TFLite operators). Keras 3 on the
TensorFlow backend (set below, so that it runs alike whatever `KERAS_BACKEND`
says; on JAX or PyTorch the export runs in a TensorFlow child process):

1. train the float model on a generated task: which of four marker tokens
   occurs most often in a sequence of 16 tokens;
2. `td.quantize_model` with the token embedding and the logits at `"int8"` and
   every other weight ternary (KerasHub's position table, a bias per position,
   stays float by design);
3. fine-tune at the float peak learning rate (`td.finetune_schedule`);
4. export to `int8` and score the file with LiteRT next to Keras and float.

    python examples/keras_hub_transformer.py [--epochs 12] [--out out/keras_hub_transformer]
"""

from __future__ import annotations

import math
import os
import pathlib

os.environ["KERAS_BACKEND"] = "tensorflow"  # before Keras is imported

import _cli
import numpy as np

with _cli.quiet_imports():  # TensorFlow loads here (the default backend)
    import keras
    import keras_hub

    import tfmot_discrete as td

VOCAB, LENGTH, CLASSES = 24, 16, 4
BATCH = 64
PEAK_LR = 2e-3


def marker_counts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` sequences of filler tokens (5..23) holding the markers 1..4; the
    label is the marker that occurs most often (the others 0-3 times each, it
    once more than the most frequent of them)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(CLASSES + 1, VOCAB, (n, LENGTH))
    y = rng.integers(0, CLASSES, n)
    for i in range(n):
        counts = rng.integers(0, 4, CLASSES)
        counts[y[i]] = 0
        counts[y[i]] = counts.max() + 1
        tokens = np.repeat(np.arange(1, CLASSES + 1), counts)
        x[i, rng.choice(LENGTH, tokens.size, replace=False)] = tokens
    return x.astype("int32"), y


def transformer() -> keras.Model:
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    h = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, LENGTH, 32, name="embed")(tokens)
    h = keras_hub.layers.TransformerEncoder(64, 4, name="encoder")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(tokens, keras.layers.Dense(CLASSES, name="logits")(h), name="counter")


def train(model, x, y, epochs):
    steps = epochs * math.ceil(len(x) / BATCH)
    model.compile(
        keras.optimizers.Adam(td.finetune_schedule(PEAK_LR, steps, keras3=True)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)) * 100


def _run(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    x, y = marker_counts(4000, seed=0)
    x_test, y_test = marker_counts(1000, seed=1)
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")

    model = transformer()
    train(model, x, y, args.epochs)
    print(f"float: test accuracy {accuracy(model, x_test, y_test):.2f}%")

    mapping = {"embed/token_embedding": "int8", "logits": "int8", ".*": td.ternary()}
    qat = td.quantize_model(model, mapping, strict=True)  # nothing of a supported kind left float
    train(qat, x, y, args.epochs)
    print(f"ternary (int8 edges): test accuracy {accuracy(qat, x_test, y_test):.2f}%")
    td.summary(qat)

    path = out / "keras_hub_transformer.tflite"
    return _cli.export_and_score(
        qat, path, x_test, y_test, format="int8", representative_data=x[:64]
    )


def main(argv=None) -> int:
    parser = _cli.parser(__doc__, out="out/keras_hub_transformer", epochs=12)
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
