"""Keras 3 training cost: train-step time over the float model's, per backend.

    python -m benchmarks.keras3_speed [--rounds 20] [--backends tensorflow,jax,torch]

One process per backend (`KERAS_BACKEND` set before Keras is imported, one
CPU thread). In it, the float 64-1024-1024-10 MLP (batch 256) and each
codebook variant are compiled the same way: XLA on TensorFlow
(`jit_compile=True`) and JAX (`jit`), eager on PyTorch. Every model is warmed
up, then all run in turn (each round starting one model later), a block of
`train_on_batch` steps each, for many rounds; a variant's ratio is the median
over rounds of its block time over the float model's block time in the same
round; the 8-bit-activation variant is also timed against the same
codebook with float activations (`AGAINST`). Two clocks: the process's CPU time (one thread: the time other jobs on
the machine take the core away does not count; the first table) and the wall
clock (the second).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

VARIANTS = {
    "binary, scale=None": ("binary", None),
    "binary, mean_abs": ("binary", "mean_abs"),
    "ternary, mean_abs": ("ternary", "mean_abs"),
    "[1, -1, 0.5, -0.5]": ("four", None),
    "[1, -1, 0.5, -0.5], mean_abs": ("four", "mean_abs"),
    "ternary, mean_abs, int8 activations": ("ternary", "mean_abs", "int8"),
}
#: Variants also timed against another variant (not the float model): the
#: cost of 8-bit activations over the weight-only step.
AGAINST = {"ternary, mean_abs, int8 activations": "ternary, mean_abs"}
BATCH = 256
STEPS = 3
#: The clocks each block is timed with: CPU time of this process, wall time.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _one_thread_env(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["OMP_NUM_THREADS"] = "1"
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def _child(rounds: int) -> dict:
    import keras  # noqa: PLC0415  (after KERAS_BACKEND is set)

    import tfmot_discrete as td  # noqa: PLC0415

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if backend == "torch":
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 64)).astype("float32")
    y = rng.integers(0, 10, size=BATCH).astype("int32")

    def mlp():
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(1024, activation="relu", name="d0"),
                keras.layers.Dense(1024, activation="relu", name="d1"),
                keras.layers.Dense(10, name="logits"),
            ]
        )

    presets = {
        "binary": td.binary,
        "ternary": td.ternary,
        "four": lambda scale: td.CodebookQuantizer([1, -1, 0.5, -0.5], scale=scale),
    }
    models = {"float": mlp()}
    for name, (preset, scale, *activations) in VARIANTS.items():
        models[name] = td.quantize_model(
            mlp(), presets[preset](scale=scale), activations=(activations or [None])[0]
        )
    for model in models.values():
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=backend != "torch",
        )
        for _ in range(3):
            model.train_on_batch(x, y)
    names = list(models)
    pairs = {name: "float" for name in VARIANTS} | {
        f"{name} / {base}": (name, base) for name, base in AGAINST.items()
    }
    ratios = {clock: {name: [] for name in pairs} for clock in CLOCKS}
    for i in range(rounds):
        times = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = [clock() for clock in CLOCKS.values()]
            for _ in range(STEPS):
                models[name].train_on_batch(x, y)
            times[name] = [clock() - t0 for clock, t0 in zip(CLOCKS.values(), start)]
        for k, clock in enumerate(CLOCKS):
            for name, against in pairs.items():
                top, base = against if isinstance(against, tuple) else (name, against)
                ratios[clock][name].append(times[top][k] / times[base][k])
    return {
        "backend": backend,
        "ratios": {
            clock: {name: _summary(r) for name, r in by_name.items()}
            for clock, by_name in ratios.items()
        },
    }


def _summary(ratios) -> list[float]:
    """Median, min and max."""
    return [float(np.median(ratios)), float(min(ratios)), float(max(ratios))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.rounds)))
        return 0
    rows = []
    for backend in args.backends.split(","):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.keras3_speed",
                "--child",
                "--rounds",
                str(args.rounds),
            ],
            env=_one_thread_env(backend),
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            print(f"{backend}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for clock in CLOCKS:
        print(f"\n{clock} time, median (min-max) over {args.rounds} rounds:\n")
        print("| variant | " + " | ".join(r["backend"] for r in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for name in rows[0]["ratios"][clock]:
            cells = ["{:.2f} ({:.2f}-{:.2f})".format(*r["ratios"][clock][name]) for r in rows]
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
