"""Recurrent and attention models on MNIST-1D read as a sequence: accuracy and file sizes.

    python -m benchmarks.sequence [--epochs 20] [--seeds 0 1 2]

Two models, both with a strided Conv1D front end (40 samples -> 20 steps of
32 features) and a linear classifier:

- `gru`: Conv1D -> GRU(64) -> Dense(10);
- `attention`: Conv1D -> MultiHeadAttention(2 heads x 16) + residual ->
  LayerNormalization -> Dense(32) per step -> Flatten -> Dense(10).

Per seed: the float model trains `--epochs` passes (Adam, cosine decay from
`PEAK_LR`); each codebook row starts from it with the front end and the
classifier at `"int8"` and every other weight on the codebook, and fine-tunes
as many passes with `td.finetune_schedule(PEAK_LR, ...)` (10 % warmup). No
BatchNormalization, so nothing to re-estimate. The row `float, fine-tuned
like the others` trains the float model as long again with that schedule:
the codebook rows get twice the float row's training. Every row is exported
(`int4`; float rows `float`) and scored by LiteRT on the test set; the file
sizes are those of seed 0's ternary model in every format. Prints a Markdown
section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tflite_export
import tfmot_discrete as td
from benchmarks import common
from tflite_export import runners
from tflite_export.logs import library_logs

keras = td.keras
L = keras.layers

PEAK_LR, BATCH = 5e-3, 100
EDGE = "conv_0|logits"
#: The float model trained as long again, with the codebook rows' schedule.
LONGER = "float, fine-tuned like the others"
FORMATS = ("float", "int8", "int4", "full_int8", "tflm_packed")


def gru() -> keras.Model:
    inp = keras.Input((40, 1), name="signal")
    x = L.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="conv_0")(inp)
    x = L.GRU(64, name="gru")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_gru")


def lstm() -> keras.Model:
    """The `gru` model with an LSTM(64) in place of the GRU (`benchmarks.agreement`'s)."""
    inp = keras.Input((40, 1), name="signal")
    x = L.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="conv_0")(inp)
    x = L.LSTM(64, name="lstm")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_lstm")


def attention() -> keras.Model:
    inp = keras.Input((40, 1), name="signal")
    x = L.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="conv_0")(inp)
    a = L.MultiHeadAttention(2, 16, name="mha")(x, x)
    x = L.LayerNormalization(name="norm")(L.Add(name="residual")([x, a]))
    x = L.Dense(32, activation="relu", name="ffn")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_attention")


MODELS = {"gru": gru, "attention": attention}


def rows():
    """`(name, quantizer)` of the codebook rows; each keeps `EDGE` at 8 bits."""
    return (
        ("ternary, mean_abs", td.ternary()),
        ("binary, mean_abs", td.binary(scale="mean_abs")),
        (
            "[1, -1, 0.5, -0.5], mean_abs",
            td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
        ),
    )


def fit(model, xtr, ytr, epochs, warmup, seed):
    steps = epochs * math.ceil(len(ytr) / BATCH)
    model.compile(
        keras.optimizers.Adam(td.finetune_schedule(PEAK_LR, steps, warmup=warmup)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(seed)
    model.fit(xtr, ytr, epochs=epochs, batch_size=BATCH, verbose=0)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def export(model, fmt, rep, tmp) -> bytes:
    path = pathlib.Path(tmp) / f"{model.name}_{fmt}.tflite"
    report = tflite_export.export(model, path, format=fmt, representative_data=rep)
    if not report.ok or (fmt != "float" and not report.exact):
        raise RuntimeError(f"{fmt} export not verified:\n{report}")
    return path.read_bytes()


def file_accuracy(data: bytes, x, y) -> float:
    return float(np.mean(np.argmax(runners.run_litert(data, [x])[0], -1) == y))


def run(epochs, seeds, log=print):
    """`{model: {row: [(keras acc, file acc)]}}` and `{model: {format: bytes}}` (seed 0's
    ternary model; the float file of the float model)."""
    from mnist1d.data import make_dataset  # noqa: PLC0415

    d = make_dataset()
    xtr, ytr = d["x"][..., None].astype("float32"), d["y"].astype("int32")
    xte, yte = d["x_test"][..., None].astype("float32"), d["y_test"].astype("int32")
    clock = common.Clock()
    acc, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in MODELS.items():
            acc[name], sizes[name] = {}, {}
            for seed in seeds:
                keras.backend.clear_session()
                keras.utils.set_random_seed(seed)
                model = build()
                fit(model, xtr, ytr, epochs, 0.0, seed)
                data = export(model, "float", xtr[:200], tmp)
                fa = file_accuracy(data, xte, yte)
                acc[name].setdefault("float", []).append((accuracy(model, xte, yte), fa))
                if seed == seeds[0]:
                    sizes[name]["float"] = len(data)
                log(f"[{clock}] {name} seed {seed} float: {acc[name]['float'][-1]}")
                longer = keras.models.clone_model(model)
                longer.set_weights(model.get_weights())
                fit(longer, xtr, ytr, epochs, 0.1, seed)
                fa = file_accuracy(export(longer, "float", xtr[:200], tmp), xte, yte)
                acc[name].setdefault(LONGER, []).append((accuracy(longer, xte, yte), fa))
                log(f"[{clock}] {name} seed {seed} {LONGER}: {acc[name][LONGER][-1]}")
                for row, q in rows():
                    qat = td.quantize_model(model, {EDGE: "int8", ".*": q})
                    fit(qat, xtr, ytr, epochs, 0.1, seed)
                    ka = accuracy(qat, xte, yte)
                    fa = file_accuracy(export(qat, "int4", xtr[:200], tmp), xte, yte)
                    acc[name].setdefault(row, []).append((ka, fa))
                    log(f"[{clock}] {name} seed {seed} {row}: {ka:.4f} (file {fa:.4f})")
                    if seed == seeds[0] and row.startswith("ternary"):
                        for fmt in FORMATS[1:]:
                            sizes[name][fmt] = len(export(qat, fmt, xtr[:200], tmp))
    return acc, sizes


def section(acc, sizes, epochs, seeds) -> str:
    """The Markdown section: accuracy table, targets, file sizes."""
    out = [
        "## Recurrent and attention models (MNIST-1D as a sequence)",
        "",
        f"`python -m benchmarks.sequence --epochs {epochs} --seeds {' '.join(map(str, seeds))}`. "
        f"{common.environment_line()}",
        "",
        "Models: `gru` = Conv1D(32, k 5, stride 2) -> GRU(64) -> Dense(10); `attention` = "
        "Conv1D(32, k 5, stride 2) -> MultiHeadAttention(2 x 16) + residual -> "
        "LayerNormalization -> Dense(32) -> Flatten -> Dense(10). Float: "
        f"{epochs} epochs, Adam, cosine decay from {PEAK_LR:g}, batch {BATCH}. Codebook rows: "
        'Conv1D and logits at `"int8"`, the GRU\'s kernel and recurrent kernel (or the '
        "attention's query/key/value/output projections and the per-step Dense) on the "
        f"codebook; {epochs} fine-tuning epochs from the float model, "
        f"`td.finetune_schedule({PEAK_LR:g}, steps, warmup=0.1)`. "
        f"`{LONGER}`: the float model trained {epochs} more epochs with that schedule (the "
        "codebook rows train twice as long as `float`). "
        f"Mean ± standard deviation over {len(seeds)} seeds; files are `int4` (float row: "
        "`float`), scored by LiteRT on the 1,000 test signals.",
        "",
    ]
    table, targets = [], []
    for name, by in acc.items():
        base = np.mean([a for a, _ in by["float"]])
        longer = np.mean([a for a, _ in by[LONGER]])
        for row, recs in by.items():
            ka = [a for a, _ in recs]
            fa = [f for _, f in recs]
            gap = max(abs(a - f) for a, f in recs)
            table.append(
                (
                    name,
                    row if row.startswith("float") else row + ", first and last layer 8-bit",
                    common.fmt_pct(ka),
                    f"{100 * (np.mean(ka) - base):+.2f}",
                    f"{100 * (np.mean(ka) - longer):+.2f}",
                    common.fmt_pct(fa),
                    f"{100 * gap:.2f}",
                )
            )
            limit = {"ternary, mean_abs": 1.0, "binary, mean_abs": 2.0}.get(row)
            if limit is not None:
                for ref, value in (("float", base), (LONGER, longer)):
                    loss = 100 * (value - np.mean(ka))
                    targets.append(
                        (
                            f"{name}: {row}, 8-bit edges >= {ref} - {limit} points",
                            f"{-loss:+.2f} points",
                            "met" if loss <= limit else "MISSED",
                        )
                    )
    out.append(
        common.md_table(
            (
                "model",
                "variant",
                "test accuracy % (Keras)",
                "vs float (points)",
                "vs float fine-tuned (points)",
                "test accuracy % (LiteRT file)",
                "max Keras-file gap (points)",
            ),
            table,
        )
    )
    out += ["", common.md_table(("target", "measured", "status"), targets), ""]
    out.append(
        "File sizes in bytes (seed 0; `float`: the float model, the others: its ternary model "
        "with 8-bit edges):"
    )
    out.append("")
    out.append(
        common.md_table(
            ("model", *FORMATS),
            [(name, *(f"{sizes[name][f]:,}" for f in FORMATS)) for name in sizes],
        )
    )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="float and fine-tuning epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    args = p.parse_args(argv)
    for name in set(MODELS) - set(args.models):
        MODELS.pop(name)
    with library_logs(False):
        acc, sizes = run(args.epochs, tuple(args.seeds))
    print(section(acc, sizes, args.epochs, tuple(args.seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
