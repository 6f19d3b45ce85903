"""Keras 3 accuracy: the from-trained-model recipe on Keras 3 against the tf_keras path.

The MNIST-1D CNN, data and recipe of `benchmarks.accuracy` (the rows with the
first convolution and the logits at `"int8"`): a float model trained from a
fresh initialization (Adam, cosine decay), then each codebook fine-tuned from
it at the float's peak learning rate (`td.finetune_schedule`: 10 % warmup,
cosine decay to 0), and the BatchNormalization statistics re-estimated.

The tf_keras path runs `benchmarks.accuracy.train_variant` itself. The Keras 3
path builds the same CNN (same layer names) in Keras 3, starts from the same
initial weights (drawn by the tf_keras build of the same seed), sees the same
pre-drawn data order, and trains with Keras 3's Adam, the Keras 3 schedule of
`td.finetune_schedule(..., keras3=True)`, `td.quantize_model` on the Keras 3
model and `td.keras3.recalibrate_batchnorm`. Each path and Keras 3 backend runs
in its own process, one after the other.

    python -m benchmarks.keras3_accuracy [--seeds 0 1 2] [--epochs 30]
        [--backends tensorflow jax] [--out out/keras3_accuracy]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time

#: The rows compared: the tf_keras benchmark's names (first conv and logits at "int8").
VARIANTS = (
    "float",
    "ternary, mean_abs, first and last layer 8-bit",
    "[1, -1, 0.5, -0.5], mean_abs, first and last layer 8-bit",
    "binary, mean_abs, first and last layer 8-bit",
)
PATHS = ("tf_keras", "keras3")
BACKENDS = ("tensorflow", "jax", "torch")


@dataclasses.dataclass(frozen=True)
class Record:
    """One trained model: which path (and backend) trained it, and its test accuracy."""

    path: str
    backend: str
    variant: str
    seed: int
    epochs: int
    accuracy: float
    seconds: float


# --- one path, in its own process -------------------------------------------------------


def _run_tf_keras(seeds, epochs, log) -> list[Record]:
    from benchmarks import accuracy, common, finetune  # noqa: PLC0415
    from tfmot_discrete import keras  # noqa: PLC0415

    task = accuracy.TASKS["mnist1d"]
    data = task.load()
    out = []
    for seed in seeds:
        float_model = None
        for v in common.pick(common.accuracy_variants(), VARIANTS):
            keras.backend.clear_session()
            t0 = time.perf_counter()
            trained, final, _ = accuracy.train_variant(v, task, data, epochs, seed, float_model)
            if v.recipe is finetune.FLOAT:
                float_model = trained
            acc = accuracy.evaluate(final, data)
            out.append(Record("tf_keras", "-", v.name, seed, epochs, acc, time.perf_counter() - t0))
            log(f"tf_keras seed {seed} {v.name}: {100 * acc:.2f} %")
    return out


def keras3_cnn(keras, channels=25):
    """`benchmarks.common.mnist1d_cnn` written in Keras 3 (the same layers and names)."""
    L = keras.layers
    inp = keras.Input((1, 40, 1), name="signal")
    x = inp
    for i, k in enumerate((5, 3, 3)):
        x = L.Conv2D(channels, (1, k), strides=(1, 2), padding="same", name=f"conv_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mnist1d_cnn")


def _run_keras3(seeds, epochs, log) -> list[Record]:
    import keras  # noqa: PLC0415  (Keras 3, on the backend of KERAS_BACKEND)
    import numpy as np  # noqa: PLC0415

    import tfmot_discrete as td  # noqa: PLC0415
    from benchmarks import accuracy, common, finetune  # noqa: PLC0415
    from tfmot_discrete import keras3 as td_keras3  # noqa: PLC0415

    task = accuracy.TASKS["mnist1d"]
    xtr, ytr, xte, yte = task.load()
    backend = keras.backend.backend()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train(model, seed, recipe):
        # `benchmarks.accuracy.train`: one pre-drawn stream of `epochs` shuffled passes.
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(xtr)) for _ in range(epochs)])
        steps = math.ceil(len(order) / task.batch)
        peak = task.lr * recipe.lr_factor
        lr = td.finetune_schedule(peak, steps, warmup=recipe.warmup, keras3=True)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        keras.utils.set_random_seed(seed)
        model.fit(xtr[order], ytr[order], batch_size=task.batch, epochs=1, shuffle=False, verbose=0)
        td_keras3.recalibrate_batchnorm(model, xtr, batch_size=task.batch)
        _, acc = model.evaluate(xte, yte, batch_size=512, verbose=0)
        return float(acc)

    out = []
    for seed in seeds:
        float_model = None
        for v in common.pick(common.accuracy_variants(), VARIANTS):
            recipe = v.recipe or finetune.DEFAULT
            t0 = time.perf_counter()
            keras.backend.clear_session()
            if float_model is None:
                # The tf_keras build of the same seed draws the initial weights.
                model = keras3_cnn(keras)
                model.set_weights(common.build(task.arch, v, seed).get_weights())
            else:
                start = keras.models.clone_model(float_model)
                start.set_weights(float_model.get_weights())
                keras.utils.set_random_seed(seed)
                model = td.quantize_model(start, v.spec)
            acc = train(model, seed, recipe)
            if v.recipe is finetune.FLOAT:
                float_model = model
            out.append(
                Record("keras3", backend, v.name, seed, epochs, acc, time.perf_counter() - t0)
            )
            log(f"keras3 ({backend}) seed {seed} {v.name}: {100 * acc:.2f} %")
    return out


def _worker(args) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    run = _run_tf_keras if args.path == "tf_keras" else _run_keras3
    records = run(args.seeds, args.epochs, log)
    args.save.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=1))
    return 0


# --- the driver: one process per path and backend, then the table ----------------------


def run_path(path: str, backend: str, seeds, epochs: int, out: pathlib.Path) -> pathlib.Path:
    """Runs one path (and Keras 3 backend) in a new process; returns its JSON file."""
    name = "tf_keras" if path == "tf_keras" else f"keras3_{backend}"
    save = out / f"{name}.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "benchmarks.keras3_accuracy", "--worker", path]
    cmd += ["--seeds", *map(str, seeds), "--epochs", str(epochs), "--save", str(save)]
    subprocess.run(cmd, env=env, check=True)
    return save


def load(paths) -> list[Record]:
    out = []
    for p in paths:
        out += [Record(**r) for r in json.loads(pathlib.Path(p).read_text())]
    return out


def table(records) -> str:
    """Per codebook: tf_keras and each Keras 3 backend (mean ± standard deviation over
    seeds) and the difference of the means (Keras 3 minus tf_keras), in points."""
    from benchmarks import common  # noqa: PLC0415

    backends = [b for b in BACKENDS if any(r.backend == b for r in records)]
    headers = ["variant", "tf_keras %"]
    for b in backends:
        headers += [f"Keras 3 ({b}) %", f"difference ({b}, points)"]
    rows = []
    for name in VARIANTS:
        ref = [r.accuracy for r in records if r.path == "tf_keras" and r.variant == name]
        if not ref:
            continue
        row = [name, common.fmt_pct(ref)]
        for b in backends:
            acc = [r.accuracy for r in records if r.backend == b and r.variant == name]
            if not acc:
                row += ["-", "-"]
                continue
            diff = 100 * (common.mean_std(acc)[0] - common.mean_std(ref)[0])
            row += [common.fmt_pct(acc), f"{diff:+.2f}"]
        rows.append(row)
    return common.md_table(headers, rows)


def summary(records) -> str:
    """Seeds, epochs and training time per path, in one line."""
    seeds = sorted({r.seed for r in records})
    epochs = sorted({r.epochs for r in records})
    times = {}
    for r in records:
        key = "tf_keras" if r.path == "tf_keras" else f"Keras 3 ({r.backend})"
        times[key] = times.get(key, 0.0) + r.seconds
    spent = ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
    return (
        f"seeds {', '.join(map(str, seeds))}; {'/'.join(map(str, epochs))} epochs per model; "
        f"training time: {spent}"
    )


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.keras3_accuracy", description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--backends", choices=BACKENDS, nargs="+", default=["tensorflow"], help="Keras 3 backends"
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/keras3_accuracy"))
    p.add_argument("--merge", type=pathlib.Path, nargs="+", help="saved JSON runs to tabulate")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--save", type=pathlib.Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.path = args.worker
        return _worker(args)
    if args.merge:
        files = args.merge
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        files = [run_path("tf_keras", "tensorflow", args.seeds, args.epochs, args.out)]
        files += [run_path("keras3", b, args.seeds, args.epochs, args.out) for b in args.backends]
    records = load(files)
    print(table(records))
    print(summary(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
