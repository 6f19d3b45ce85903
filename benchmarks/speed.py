"""Training cost: train-step time of each variant over the float model's, and the projection.

Step ratios: every variant of one architecture is built in the same process
(a fresh one per architecture, with one TensorFlow thread), twice: its train
step compiled as a `tf.function` (the default `model.compile`) and with
`jit_compile=True` (XLA). Every step is warmed up, then all run in turn, a
small block of steps each, for many rounds; the ratio is the median over
rounds of a variant's step time over the float model's (compiled the same way)
in the same round.

Projection alone: `ops.project_ste` forward and backward on N = 1M weights for
several codebook sizes K, each K in a fresh subprocess whose peak resident
memory (`VmHWM` in `/proc/self/status`) is read before and after.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import tfmot_discrete as td
from benchmarks import common
from tfmot_discrete import keras

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


#: How each train step is compiled: `tf.function` alone, or with XLA.
COMPILES = {"default": False, "jit": True}


def interleaved_times(steps: dict, x, y, rounds: int, block: int) -> dict:
    """`{key: [CPU seconds per step, one per round]}` of `steps` (train-step
    functions of `x, y`), run in turn `block` steps each for `rounds` rounds."""
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            t0 = time.process_time()
            for _ in range(block):
                loss = step(x, y)
            loss.numpy()
            times[key].append((time.process_time() - t0) / block)
    return times


def train_step(model, jit_compile=False):
    """A compiled Adam train step (`tf.function`, with XLA if `jit_compile`) on fixed inputs."""
    opt = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def time_steps(kind: str, width: int, variants, rounds: int, block: int, log=print) -> dict:
    """Median seconds per train step of each variant and compile mode, measured interleaved.

    Returns:
        `{"default": {variant: seconds}, "jit": {variant: seconds or None},
        "ratio": {mode: {variant: ratio or None}}}`: median step seconds, and
        the median over rounds of the variant's step time over the float
        model's in the same round and mode (neighbours in time, so a slower
        stretch of the machine cancels out); None where XLA cannot compile the
        variant's step (the reason is logged).
    """
    rng = np.random.default_rng(0)
    n = BATCH[kind]
    x = tf.constant(rng.normal(size=(n, *INPUT[kind])).astype("float32"))
    y = tf.constant(rng.integers(0, 10, n).astype("int32"))
    steps = {}
    failed = {}
    for mode, jit in COMPILES.items():
        for v in variants:
            model = common.build(_arch(kind, width), v, 0)
            if v.kind == "cluster":
                model = common.cluster(model, v.spec)
            step = train_step(model, jit)
            try:  # trace, compile and warm up
                for _ in range(3):
                    step(x, y).numpy()
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
                failed[(mode, v.name)] = str(e).splitlines()[0][:200]
                log(f"  {kind} {width} {v.name}: XLA does not compile it: {failed[(mode, v.name)]}")
                continue
            steps[(mode, v.name)] = step
    times = interleaved_times(steps, x, y, rounds, block)
    out = {mode: {} for mode in COMPILES}
    out["ratio"] = {mode: {} for mode in COMPILES}
    for mode in COMPILES:
        base = np.asarray(times[(mode, "float")])
        for v in variants:
            t = times.get((mode, v.name))
            out[mode][v.name] = float(np.median(t)) if t else None
            out["ratio"][mode][v.name] = float(np.median(np.asarray(t) / base)) if t else None
    log(
        f"  {kind} width {width}: float step {1e3 * out['default']['float']:.2f} ms, "
        f"with XLA {1e3 * out['jit']['float']:.2f} ms"
    )
    return out


_STEPS_CHILD = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from benchmarks import common, speed
settings = common.SETTINGS[sys.argv[3]]
variants = common.pick(speed.speed_variants(), settings.speed_variants)
log = lambda msg: print(msg, file=sys.stderr, flush=True)
res = speed.time_steps(
    sys.argv[1], int(sys.argv[2]), variants, settings.speed_rounds, settings.speed_block, log
)
print(json.dumps(res))
"""


def run_steps(settings: common.Settings, log=print, jobs: int = 1) -> dict:
    """`{(kind, width): {mode: {variant: median step seconds}}}` for every model.

    Each model is timed in a fresh process with one TensorFlow thread (intra-
    and inter-op), `jobs` processes at a time (CPU time is measured, so the
    ratios stay comparable when they share the machine).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    models = [("MLP", w) for w in settings.mlp_widths] + [("CNN", w) for w in settings.cnn_widths]
    running, out = {}, {}

    def _finish(model, job):
        proc, files = job
        proc.wait()
        stdout, stderr = (f.seek(0) or f.read() for f in files)
        for f in files:
            f.close()
        for line in stderr.splitlines():
            if line.startswith("  "):
                log(line)
        if proc.returncode != 0:
            raise RuntimeError(f"Timing {model} failed:\n{stderr[-3000:]}")
        out[model] = json.loads(stdout.strip().splitlines()[-1])

    for kind, w in models:
        while len(running) >= max(1, jobs):
            model = next(iter(running))
            _finish(model, running.pop(model))
        files = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        proc = subprocess.Popen(
            [sys.executable, "-c", _STEPS_CHILD, kind, str(w), settings.name],
            stdout=files[0],
            stderr=files[1],
            text=True,
            env=env,
            cwd=root,
        )
        running[(kind, w)] = (proc, files)
    for model, job in list(running.items()):
        _finish(model, job)
    return {m: out[m] for m in models}


def _ratio(result, model, mode, name) -> float | None:
    return result[model]["ratio"][mode].get(name)


def steps_table(result: dict) -> str:
    """Rows: each variant, compiled by default and with XLA; columns: each model's step ratio."""
    models = list(result)
    names = list(next(iter(result.values()))["default"])
    headers = ["variant", "jit_compile"] + [
        f"{k} {w} ({1e3 * result[(k, w)]['default']['float']:.1f} / "
        f"{1e3 * result[(k, w)]['jit']['float']:.1f} ms float step)"
        for k, w in models
    ]
    rows = []
    for name in names:
        for mode in COMPILES:
            cells = [name, "True" if COMPILES[mode] else "False"]
            for m in models:
                r = _ratio(result, m, mode, name)
                cells.append("does not compile" if r is None else f"{r:.2f}")
            rows.append(cells)
    return common.md_table(headers, rows)


#: Variants held to `JIT_TARGETS[1]` with XLA: `learned` scales and K = 8.
JIT_LOOSE_VARIANTS = ("binary, learned", "power_of_two(bits=3), K=8")
JIT_TARGETS = (1.05, 1.10)


def steps_targets(result: dict) -> list[tuple[str, str, str]]:
    out = []
    for mode, names, limit in (
        ("default", TARGET_VARIANTS, TARGET_RATIO),
        ("jit", TARGET_VARIANTS, JIT_TARGETS[0]),
        ("jit", JIT_LOOSE_VARIANTS, JIT_TARGETS[1]),
    ):
        for name in names:
            ratios = [_ratio(result, m, mode, name) for m in result]
            ratios = [r for r in ratios if r is not None]
            if not ratios:
                continue
            worst = max(ratios)
            how = "jit_compile=True, both" if mode == "jit" else "default compile"
            out.append(
                (
                    f"train step of {name} <= {limit} x float ({how}; every model)",
                    f"max {worst:.2f} (min {min(ratios):.2f})",
                    "met" if worst <= limit else "MISSED",
                )
            )
    return out


# --- projection alone ------------------------------------------------------------------

_CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from tfmot_discrete.tfk import ops

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

k, n, repeats, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jit = sys.argv[5] == "jit"
values = np.linspace(-1.0, 1.0, k)
if method == "uneven":
    values = np.sinh(np.linspace(-3.0, 3.0, k)) / np.sinh(3.0)
x = tf.Variable(tf.random.uniform([n], -1.5, 1.5, seed=0))
vt = tf.constant(values, tf.float32)

def argmin_project(t):
    d = tf.abs(t[:, None] - vt[None, :])
    return tf.gather(vt, tf.argmin(d, axis=1))

@tf.function(jit_compile=jit)
def step():
    with tf.GradientTape() as tape:
        if method in ("ours", "uneven"):
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
    t0 = time.process_time()
    step().numpy()
    times.append(time.process_time() - t0)
print(json.dumps({"seconds": float(np.median(times)), "peak_bytes": hwm() - before}))
"""

PROJECTION_N = 1_000_000


def projection_one(
    k: int, repeats: int, method: str = "ours", n: int = PROJECTION_N, mode: str = "default"
) -> dict:
    """Median forward+backward seconds and peak RSS growth of one projection."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(k), str(n), str(repeats), method, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


#: (method, compile mode) rows of the projection table.
PROJECTION_ROWS = (
    ("ours", "default"),
    ("ours", "jit"),
    ("uneven", "default"),
    ("uneven", "jit"),
    ("argmin", "default"),
)


def run_projection(settings: common.Settings, log=print) -> dict:
    """`{(method, mode, K): {"seconds", "peak_bytes"}}` at N = 1M weights."""
    out = {}
    for method, mode in settings.projection_rows or PROJECTION_ROWS:
        for k in settings.projection_ks:
            r = projection_one(k, settings.projection_repeats, method, mode=mode)
            out[(method, mode, k)] = r
            log(f"  projection {method} ({mode}) K={k}: {1e3 * r['seconds']:.1f} ms")
    return out


def _rows(result: dict) -> list[tuple[str, str]]:
    """The `(method, mode)` rows measured, in `PROJECTION_ROWS` order."""
    return [row for row in PROJECTION_ROWS if (*row, min(k for *_, k in result)) in result]


def projection_table(result: dict) -> str:
    ks = sorted({k for *_, k in result})
    rows = []
    labels = {
        "ours": "`ops.project_ste`, evenly spaced codebook",
        "uneven": "`ops.project_ste`, unevenly spaced codebook",
        "argmin": "reference: argmin over an N x K distance tensor",
    }
    for method, mode in _rows(result):
        base = result[(method, mode, ks[0])]["seconds"]
        for k in ks:
            r = result[(method, mode, k)]
            rows.append(
                (
                    labels[method],
                    str(COMPILES[mode]),
                    k,
                    f"{1e3 * r['seconds']:.1f}",
                    f"{r['seconds'] / base:.2f}",
                    f"{r['peak_bytes'] / 2**20:.1f}",
                )
            )
    headers = (
        "projection (forward + backward, N = 1M)",
        "jit_compile",
        "K",
        "median ms",
        f"time / time at K={ks[0]}",
        "peak RSS growth (MiB)",
    )
    return common.md_table(headers, rows)


def projection_targets(result: dict) -> list[tuple[str, str, str]]:
    ks = sorted({k for m, _, k in result if m == "ours"})
    if len(ks) < 2 or ks[-1] <= 16:
        return []
    out = []
    for method, mode in _rows(result):
        if method == "argmin":
            continue
        r0, rk = result[(method, mode, ks[0])], result[(method, mode, ks[-1])]
        ratio = rk["seconds"] / r0["seconds"]
        m0, mk = r0["peak_bytes"], rk["peak_bytes"]
        ok = ratio <= 2.0 and mk <= max(2 * m0, m0 + 16 * 2**20)
        spacing = "evenly" if method == "ours" else "unevenly"
        out.append(
            (
                f"projection K={ks[-1]} within 2x of K={ks[0]} (N = 1M, {spacing} spaced, "
                f"jit_compile={COMPILES[mode]})",
                f"time x{ratio:.2f}; peak memory {m0 / 2**20:.1f} -> {mk / 2**20:.1f} MiB",
                "met" if ok else "MISSED",
            )
        )
    return out
