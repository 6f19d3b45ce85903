"""Accuracy: every variant on the same data, model, optimizer, epochs and data order.

Datasets: scikit-learn's digits (an MLP) and MNIST-1D (the paper's small CNN).
Each trained model is also exported to a TFLite file and evaluated with LiteRT
on the test set, so the table shows what reaches the device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

import tflite_export
from benchmarks import common
from tflite_export import exact, pipeline, runners
from tfmot_discrete._keras import keras


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with its model and training recipe."""

    name: str
    title: str
    load: object
    arch: object
    lr: float
    batch: int


TASKS = {
    "digits": Task(
        "digits",
        "scikit-learn digits, MLP 64-256-256-10 (BatchNorm, ReLU)",
        common.digits,
        functools.partial(common.mlp, inputs=64, hidden=256),
        3e-3,
        64,
    ),
    "mnist1d": Task(
        "mnist1d",
        "MNIST-1D (make_dataset defaults), CNN 3 x conv(25 ch, k 5/3/3, stride 2) + linear "
        "(BatchNorm, ReLU)",
        common.mnist1d,
        common.mnist1d_cnn,
        1e-2,
        100,
    ),
}


@dataclasses.dataclass
class Record:
    """One trained model's results."""

    task: str
    variant: str
    seed: int
    accuracy: float
    export_accuracy: float | None
    export_format: str


def train(model, data, epochs: int, task: Task, seed: int) -> keras.Model:
    """Adam on one pre-drawn stream of `epochs` shuffled passes (the same for every variant)."""
    xtr, ytr = data[0], data[1]
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(xtr)) for _ in range(epochs)])
    model.compile(
        optimizer=keras.optimizers.Adam(task.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(seed)
    model.fit(xtr[order], ytr[order], batch_size=task.batch, epochs=1, shuffle=False, verbose=0)
    return model


def evaluate(model, data) -> float:
    _, acc = model.evaluate(data[2], data[3], batch_size=512, verbose=0)
    return float(acc)


def tflite_accuracy(model_bytes: bytes, data) -> float:
    return float(np.mean(np.argmax(runners.run_litert(model_bytes, [data[2]])[0], -1) == data[3]))


def deploy_format(variant: common.Variant) -> str:
    """The narrowest exact format for our codebooks; int8 weight-only for the others."""
    if variant.kind == "ours" and isinstance(variant.spec, dict):
        # Float layers next to codebook ones: `export` holds every weight-only file to
        # the Keras outputs, which int4 or int8 float layers miss; convert unverified.
        return "int8, unverified"
    if variant.kind == "ours":
        return exact.smallest_exact_format(common.codebook_of(variant).codebook)
    if variant.kind == "tfmot_qat":
        return "TFLiteConverter"
    return "int8"


def to_tflite(model, variant: common.Variant, data, fmt: str) -> bytes:
    """Bytes of the deployed file (our `tflite_export`, or TF-MOT's own converter path)."""
    if fmt == "TFLiteConverter":
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return bytes(conv.convert())
    rep = data[0][:200]
    if fmt == "int8, unverified":
        return pipeline.convert_bytes(model, "int8", representative_data=rep).data
    if variant.kind != "ours":
        # Not a codebook model: `export` would hold int8 weights to the float outputs.
        return pipeline.convert_bytes(model, fmt, representative_data=rep).data
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        tflite_export.export(model, path, format=fmt, representative_data=rep)
        return path.read_bytes()


def train_variant(variant, task, data, epochs, seed, float_model):
    """Builds and trains one variant; returns (trained model, model to evaluate/export)."""
    if variant.kind == "cluster":
        if float_model is None:
            raise ValueError("Clustering starts from the trained float model: run 'float' first.")
        start = keras.models.clone_model(float_model)
        start.set_weights(float_model.get_weights())
        model = train(common.cluster(start, variant.spec), data, epochs, task, seed)
        plain = common.strip_cluster(model)
        plain.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model, plain
    model = train(common.build(task.arch, variant, seed), data, epochs, task, seed)
    return model, model


def run(settings: common.Settings, log=print) -> dict:
    """Trains every variant on every dataset and seed.

    Returns:
        `{"records": [Record], "models": {(task, variant): model of the first seed},
        "data": {task: data}, "epochs": {task: epochs}}`.
    """
    variants = common.pick(common.accuracy_variants(), settings.variants)
    out = {"records": [], "models": {}, "data": {}, "epochs": {}}
    clock = common.Clock()
    for name in settings.datasets:
        task = TASKS[name]
        data = task.load()
        epochs = settings.digits_epochs if name == "digits" else settings.mnist1d_epochs
        out["data"][name], out["epochs"][name] = data, epochs
        for seed in settings.seeds:
            float_model = None
            for v in variants:
                keras.backend.clear_session()
                trained, final = train_variant(v, task, data, epochs, seed, float_model)
                if v.kind == "float":
                    float_model = trained
                acc = evaluate(final, data)
                fmt = deploy_format(v)
                try:
                    exp_acc = tflite_accuracy(to_tflite(final, v, data, fmt), data)
                except Exception as e:  # noqa: BLE001 - recorded in the table
                    log(f"  export of {v.name} failed: {type(e).__name__}: {e}")
                    exp_acc = None
                out["records"].append(Record(name, v.name, seed, acc, exp_acc, fmt))
                if seed == settings.seeds[0]:
                    out["models"][(name, v.name)] = final
                exp = "-" if exp_acc is None else f"{100 * exp_acc:.2f}"
                log(f"[{clock}] {name} seed {seed} {v.name}: {100 * acc:.2f} % (file {exp})")
    return out


def records_by_variant(records, task: str) -> dict:
    """`{variant: [Record, ...]}` of one dataset, in the order they were trained."""
    by = {}
    for r in records:
        if r.task == task:
            by.setdefault(r.variant, []).append(r)
    return by


def table(result: dict, task: str) -> str:
    """The accuracy table of one dataset (Markdown)."""
    variants = {v.name: v for v in common.accuracy_variants()}
    by = records_by_variant(result["records"], task)
    base = common.mean_std([r.accuracy for r in by["float"]])[0] if "float" in by else math.nan
    rows = []
    for name, recs in by.items():
        v = variants[name]
        acc = [r.accuracy for r in recs]
        exp = [r.export_accuracy for r in recs]
        ok = all(e is not None for e in exp)
        diff = max(abs(a - e) for a, e in zip(acc, exp)) if ok else None
        rows.append(
            (
                name,
                v.values,
                v.bits,
                common.fmt_pct(acc),
                f"{100 * (common.mean_std(acc)[0] - base):+.2f}",
                common.fmt_pct(exp) if ok else "failed",
                recs[0].export_format,
                f"{100 * diff:.2f}" if ok else "-",
            )
        )
    headers = (
        "variant",
        "values per layer",
        "bits/weight",
        "test accuracy % (Keras)",
        "vs float (points)",
        "test accuracy % (LiteRT, exported file)",
        "file format",
        "max Keras-file gap (points)",
    )
    return common.md_table(headers, rows)


def _mean(by, name):
    return common.mean_std([r.accuracy for r in by[name]])[0] if name in by else None


def targets(result: dict) -> list[tuple[str, str, str]]:
    """`(target, measured, "met" | "MISSED")` for each stated target that was run."""
    out = []
    for task, limit, names in (
        ("digits", 1.0, ("binary, mean_abs", "binary, learned")),
        ("mnist1d", 3.0, ("binary, mean_abs", "binary, learned")),
        ("digits", 0.5, ("ternary, mean_abs", "[1, -1, 0.5, -0.5]")),
    ):
        by = records_by_variant(result["records"], task)
        base = _mean(by, "float")
        for name in names:
            acc = _mean(by, name)
            if base is None or acc is None:
                continue
            gap = 100 * (base - acc)
            out.append(
                (
                    f"{task}: {name} within {limit} point(s) of float",
                    f"{-gap:+.2f} points vs float",
                    "met" if gap <= limit else "MISSED",
                )
            )
    pairs = (
        ("binary, scale=None", 2),
        ("binary, mean_abs", 2),
        ("binary, learned", 2),
        ("binary, mean_abs, stochastic", 2),
        ("ternary, mean_abs", 3),
        ("[1, -1, 0.5, -0.5]", 4),
    )
    for task in result["data"]:
        by = records_by_variant(result["records"], task)
        for name, k in pairs:
            peer = f"TF-MOT clustering, {k} clusters"
            ours, theirs = _mean(by, name), _mean(by, peer)
            if ours is None or theirs is None:
                continue
            out.append(
                (
                    f"{task}: {name} >= clustering with {k} clusters",
                    f"{100 * ours:.2f} vs {100 * theirs:.2f}",
                    "met" if ours >= theirs else "MISSED",
                )
            )
    return out
