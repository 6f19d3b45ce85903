"""Training cost: train-step time of each variant over the float model's, and the projection.

Step ratios: every variant of one architecture is built in the same process,
its compiled train step warmed up, then all variants run in turn, a small
block of steps each, for many rounds; the ratio is the median step time of a
variant over the median step time of the float model.

Projection alone: `ops.project_ste` forward and backward on N = 1M weights for
several codebook sizes K, each K in a fresh subprocess whose peak resident
memory (`VmHWM` in `/proc/self/status`) is read before and after.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

import tfmot_discrete as td
from benchmarks import common
from tfmot_discrete._keras import keras

BATCH = {"MLP": 256, "CNN": 64}
INPUT = {"MLP": (64,), "CNN": (32, 32, 3)}


def speed_variants() -> list[common.Variant]:
    """Variants timed, ours first, then the peers."""
    q = td.CodebookQuantizer
    return [
        common.Variant("float", "float"),
        common.Variant("binary, scale=None", "ours", td.binary(), 1),
        common.Variant("binary, mean_abs", "ours", td.binary(scale="mean_abs"), 1),
        common.Variant("binary, learned", "ours", td.binary(scale="learned"), 1),
        common.Variant("ternary, scale=None", "ours", td.ternary(scale=None), 2),
        common.Variant("ternary, mean_abs", "ours", td.ternary(), 2),
        common.Variant("[1, -1, 0.5, -0.5]", "ours", q([1, -1, 0.5, -0.5]), 2),
        common.Variant(
            "[1, -1, 0.5, -0.5], mean_abs", "ours", q([1, -1, 0.5, -0.5], "mean_abs"), 2
        ),
        common.Variant("power_of_two(bits=3), K=8", "ours", td.power_of_two(bits=3), 3),
        common.Variant("uniform K=16", "ours", q(np.linspace(-1, 1, 16)), 4),
        common.Variant("Larq-style ste_sign", "map", "ste_sign", 1),
        common.Variant("Larq-style magnitude_aware_sign", "map", "magnitude_aware_sign", 1),
        common.Variant("TF-MOT 8-bit QAT", "tfmot_qat", None, 8),
        common.Variant("TF-MOT clustering, 4 clusters", "cluster", 4, 2),
    ]


#: Variants held to the 1.15 target: codebooks of up to 4 values, scale None or mean_abs.
TARGET_VARIANTS = (
    "binary, scale=None",
    "binary, mean_abs",
    "ternary, scale=None",
    "ternary, mean_abs",
    "[1, -1, 0.5, -0.5]",
    "[1, -1, 0.5, -0.5], mean_abs",
)
TARGET_RATIO = 1.15


def _arch(kind: str, width: int):
    if kind == "MLP":
        return functools.partial(common.mlp, inputs=64, hidden=width, batch_norm=False)
    return functools.partial(common.image_cnn, width=width)


def _train_step(model):
    """A compiled Adam train step (`tf.function`) on fixed inputs; returns a callable."""
    opt = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def time_steps(kind: str, width: int, variants, rounds: int, block: int, log=print) -> dict:
    """Median seconds per train step of each variant, measured interleaved."""
    rng = np.random.default_rng(0)
    n = BATCH[kind]
    x = tf.constant(rng.normal(size=(n, *INPUT[kind])).astype("float32"))
    y = tf.constant(rng.integers(0, 10, n).astype("int32"))
    steps = {}
    for v in variants:
        model = common.build(_arch(kind, width), v, 0)
        if v.kind == "cluster":
            model = common.cluster(model, v.spec)
        steps[v.name] = _train_step(model)
    for step in steps.values():  # trace and warm up
        for _ in range(3):
            step(x, y).numpy()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(block):
                loss = step(x, y)
            loss.numpy()
            times[name].append((time.perf_counter() - t0) / block)
    log(f"  {kind} width {width}: float step {1e3 * np.median(times['float']):.2f} ms")
    return {name: float(np.median(t)) for name, t in times.items()}


def run_steps(settings: common.Settings, log=print) -> dict:
    """`{(kind, width): {variant: median step seconds}}` for every model."""
    variants = common.pick(speed_variants(), settings.speed_variants)
    out = {}
    for kind, widths in (("MLP", settings.mlp_widths), ("CNN", settings.cnn_widths)):
        for w in widths:
            keras.backend.clear_session()
            out[(kind, w)] = time_steps(
                kind, w, variants, settings.speed_rounds, settings.speed_block, log
            )
    return out


def steps_table(result: dict) -> str:
    """Rows: variants; columns: each model's step ratio against float."""
    models = list(result)
    names = list(next(iter(result.values())))
    headers = ["variant"] + [
        f"{k} {w} ({1e3 * result[(k, w)]['float']:.1f} ms float step)" for k, w in models
    ]
    rows = []
    for name in names:
        cells = [name]
        for m in models:
            cells.append(f"{result[m][name] / result[m]['float']:.2f}")
        rows.append(cells)
    return common.md_table(headers, rows)


def steps_targets(result: dict) -> list[tuple[str, str, str]]:
    out = []
    for name in TARGET_VARIANTS:
        ratios = [r[name] / r["float"] for r in result.values() if name in r]
        if not ratios:
            continue
        worst = max(ratios)
        out.append(
            (
                f"train step of {name} <= {TARGET_RATIO} x float (every model)",
                f"max {worst:.2f} (min {min(ratios):.2f})",
                "met" if worst <= TARGET_RATIO else "MISSED",
            )
        )
    return out


# --- projection alone ------------------------------------------------------------------

_CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
from tfmot_discrete import ops

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

k, n, repeats, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
values = np.linspace(-1.0, 1.0, k)
x = tf.Variable(tf.random.uniform([n], -1.5, 1.5, seed=0))
vt = tf.constant(values, tf.float32)

def argmin_project(t):
    d = tf.abs(t[:, None] - vt[None, :])
    return tf.gather(vt, tf.argmin(d, axis=1))

@tf.function
def step():
    with tf.GradientTape() as tape:
        if method == "ours":
            y = ops.project_ste(x, values)
        else:
            y = x + tf.stop_gradient(argmin_project(x) - x)
        loss = tf.reduce_sum(y * y)
    return tape.gradient(loss, x)

step.get_concrete_function()
before = hwm()
step().numpy()
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    step().numpy()
    times.append(time.perf_counter() - t0)
print(json.dumps({"seconds": float(np.median(times)), "peak_bytes": hwm() - before}))
"""

PROJECTION_N = 1_000_000


def projection_one(k: int, repeats: int, method: str = "ours", n: int = PROJECTION_N) -> dict:
    """Median forward+backward seconds and peak RSS growth of one projection."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(k), str(n), str(repeats), method],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_projection(settings: common.Settings, log=print) -> dict:
    """`{(method, K): {"seconds", "peak_bytes"}}` at N = 1M weights."""
    out = {}
    for method in ("ours", "argmin"):
        for k in settings.projection_ks:
            out[(method, k)] = projection_one(k, settings.projection_repeats, method)
            log(f"  projection {method} K={k}: {1e3 * out[(method, k)]['seconds']:.1f} ms")
    return out


def projection_table(result: dict) -> str:
    ks = sorted({k for _, k in result})
    rows = []
    labels = {
        "ours": "`ops.project_ste` (where-chain K <= 8, sorted search above)",
        "argmin": "reference: argmin over an N x K distance tensor",
    }
    for method in ("ours", "argmin"):
        for k in ks:
            r = result[(method, k)]
            base = result[(method, ks[0])]["seconds"]
            rows.append(
                (
                    labels[method],
                    k,
                    f"{1e3 * r['seconds']:.1f}",
                    f"{r['seconds'] / base:.2f}",
                    f"{r['peak_bytes'] / 2**20:.1f}",
                )
            )
    headers = (
        "projection (forward + backward, N = 1M)",
        "K",
        "median ms",
        f"time / time at K={ks[0]}",
        "peak RSS growth (MiB)",
    )
    return common.md_table(headers, rows)


def projection_targets(result: dict) -> list[tuple[str, str, str]]:
    ks = sorted({k for m, k in result if m == "ours"})
    if len(ks) < 2 or ks[-1] <= 16 or 16 not in ks:
        return []
    t16, tk = result[("ours", 16)]["seconds"], result[("ours", ks[-1])]["seconds"]
    m16, mk = result[("ours", 16)]["peak_bytes"], result[("ours", ks[-1])]["peak_bytes"]
    log_ratio = np.log2(ks[-1]) / np.log2(16)
    lin_ratio = ks[-1] / 16
    ok = tk / t16 <= log_ratio * 1.5 and mk <= max(2 * m16, m16 + 16 * 2**20)
    return [
        (
            f"projection grows like log K, not K (K=16 -> {ks[-1]})",
            f"time x{tk / t16:.2f} (log K predicts x{log_ratio:.1f}, K x{lin_ratio:.0f}); "
            f"peak memory {m16 / 2**20:.1f} -> {mk / 2**20:.1f} MiB",
            "met" if ok else "MISSED",
        )
    ]
