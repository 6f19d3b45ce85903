"""Full-integer files against Keras: accuracy and top-1 agreement, calibrated or trained ranges.

    python -m benchmarks.agreement [--epochs 12] [--seeds 0 1 2]

Four MNIST-1D models: `cnn` (the accuracy benchmark's CNN, `common.mnist1d_cnn`,
with BatchNormalization) and the sequence benchmark's `lstm`, `gru` and
`attention` (`benchmarks.sequence`). Per seed, the float model trains
`--epochs` passes (`sequence.fit`: Adam, cosine decay from `sequence.PEAK_LR`);
from it, two ternary models with the first convolution and the logits at
`"int8"` fine-tune as many passes with `td.finetune_schedule` (10 % warmup):
one with float activations (`activations=None`, the file's ranges calibrated
at export) and one with `activations="int8"` (ranges learned in training).
The CNN's BatchNorm statistics are re-estimated after the weight-only
fine-tuning (`td.recalibrate_batchnorm`), not after the int8-activation one,
whose learned ranges were trained with the statistics it has.

Each is exported as `full_int8` and `tflm_packed` with 256 training signals
as `representative_data`; the report's `top1_agreement` is on those. An
int8-activation model whose file keeps its trained ranges (the CNN, and the
LSTM and GRU, which train with 8-bit states: `tfk.recurrent`) is then
exported once more with `align_biases=True` (its biases moved onto the file's
int32 grid: "trained, biases aligned"). On the
1,000 test signals this benchmark also runs the files itself (`full_int8` on
LiteRT, `tflm_packed` on TFLM's Python interpreter) and compares them with the
Keras model: accuracy of both and the share of signals whose top-1 class is
Keras's.

Train step: for each model, the weight-only and the int8-activation QAT
models are built in one child process with one TensorFlow thread, their Adam
steps (`speed.train_step`) warmed up and run in turn, a few steps each, for
many rounds; the ratio is the median over rounds of the int8-activation step's
CPU time over the weight-only step's in the same round.

Prints a Markdown section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tflite_export
import tfmot_discrete as td
from benchmarks import common, sequence
from tflite_export import agreement, runners
from tflite_export.logs import library_logs

keras = td.keras

MODELS = {
    "cnn": common.mnist1d_cnn,
    "lstm": sequence.lstm,
    "gru": sequence.gru,
    "attention": sequence.attention,
}
#: How the activation ranges are found: calibrated at export, or learned in training.
ACTIVATIONS = {"calibrated": None, "trained": "int8"}
#: A trained model whose file keeps its trained ranges (not the attention model,
#: which converts from an unrolled copy, calibrated) is exported once more with
#: `align_biases=True`.
ALIGNED = "trained, biases aligned"
FORMATS = ("full_int8", "tflm_packed")
CALIBRATION = 256
#: The targets: least top-1 agreement on the test set, largest |file - Keras| accuracy
#: (points), per way of finding the ranges; the train step's largest ratio.
TOP1_TARGET = {
    "trained": agreement.TOP1_LIMIT_TRAINED,
    ALIGNED: agreement.TOP1_LIMIT_TRAINED,
    "calibrated": agreement.TOP1_LIMIT_CALIBRATED,
}
GAP_TARGET = {"trained": 0.3, ALIGNED: 0.3, "calibrated": 0.5}
STEP_TARGET = 1.15
STEP_ROUNDS, STEP_BLOCK = 20, 3


def data():
    """MNIST-1D (`common.mnist1d`) as `(x_train, y_train, x_test, y_test)`, signals `(N, 40, 1)`."""
    xtr, ytr, xte, yte = common.mnist1d()
    return xtr[:, 0], ytr, xte[:, 0], yte


def shaped(name: str, x: np.ndarray) -> np.ndarray:
    """`x` as model `name` takes it: the CNN reads `(N, 1, 40, 1)`."""
    return x[:, None] if name == "cnn" else x


def quantized(model, activations):
    """Ternary with the first convolution and the logits at `"int8"`."""
    return td.quantize_model(
        model, {sequence.EDGE: "int8", ".*": td.ternary()}, activations=activations
    )


def against_keras(model, fmt: str, rep, x, y, tmp, align_biases=False) -> dict:
    """Exports `model` as `fmt`, runs the file on `x` and compares it with Keras."""
    path = pathlib.Path(tmp) / f"{model.name}_{fmt}.tflite"
    report = tflite_export.export(
        model, path, format=fmt, representative_data=rep, align_biases=align_biases
    )
    if not report.exact:
        raise RuntimeError(f"{fmt} export not exact:\n{report}")
    data_ = path.read_bytes()
    if fmt == "full_int8":
        got = runners.run_litert(data_, [x])[0]
    else:
        got = runners.run_tflm(data_, [x], dequantize=True)[0]
    keras_top1 = np.argmax(model.predict(x, batch_size=256, verbose=0), -1)
    file_top1 = np.argmax(got, -1)
    return {
        "keras": float(np.mean(keras_top1 == y)),
        "file": float(np.mean(file_top1 == y)),
        "agree": float(np.mean(file_top1 == keras_top1)),
        "report_agree": report.top1_agreement,
        "report_samples": report.agreement.samples,
        "within": report.agrees,
        "trained_ranges": report.agreement.trained_activations,
    }


def both_formats(qat, key, rep, x, y, tmp, out, log, align_biases=False) -> dict:
    """`against_keras` for each of `FORMATS`, recorded in `out["files"]` under
    `(model, label, format)` (`key`: model, label, seed); the last record."""
    name, label, seed = key
    for fmt in FORMATS:
        rec = against_keras(qat, fmt, rep, x, y, tmp, align_biases)
        out["files"].setdefault((name, label, fmt), []).append(rec)
        log(
            f"{name} seed {seed} {label} {fmt}: Keras {rec['keras']:.4f} file "
            f"{rec['file']:.4f} agree {rec['agree']:.4f} (report {rec['report_agree']:.4f})"
        )
    return rec


def run(epochs, seeds, models, log=print) -> dict:
    """`{"float": {model: [acc]}, "files": {(model, activations, format): [record]}}`."""
    xtr, ytr, xte, yte = data()
    clock = common.Clock()
    out = {"float": {}, "files": {}}

    def stamped(message):
        log(f"[{clock}] {message}")

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            xtr_, xte_ = shaped(name, xtr), shaped(name, xte)
            rep = xtr_[:CALIBRATION]
            for seed in seeds:
                keras.backend.clear_session()
                keras.utils.set_random_seed(seed)
                model = MODELS[name]()
                sequence.fit(model, xtr_, ytr, epochs, 0.0, seed)
                out["float"].setdefault(name, []).append(sequence.accuracy(model, xte_, yte))
                stamped(f"{name} seed {seed} float: {out['float'][name][-1]:.4f}")
                for how, act in ACTIVATIONS.items():
                    qat = quantized(model, act)
                    sequence.fit(qat, xtr_, ytr, epochs, 0.1, seed)
                    if name == "cnn" and act is None:
                        td.recalibrate_batchnorm(qat, xtr_, batch_size=sequence.BATCH)
                    checks = (rep, xte_, yte, tmp, out, stamped)
                    if both_formats(qat, (name, how, seed), *checks)["trained_ranges"]:
                        # Once more with the biases moved (last: it changes the model).
                        both_formats(qat, (name, ALIGNED, seed), *checks, align_biases=True)
    return out


# --- train step ------------------------------------------------------------------------


def time_steps(name: str, rounds: int = STEP_ROUNDS, block: int = STEP_BLOCK) -> dict:
    """Median CPU seconds per Adam step of model `name`'s two QAT models, interleaved.

    Returns:
        `{"weights only": s, "int8 activations": s, "ratio": r}`: the median
        step times, and the median over rounds of the int8-activation step's
        time over the weight-only step's in the same round.
    """
    import tensorflow as tf  # noqa: PLC0415

    from benchmarks import speed  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(sequence.BATCH, *model.input_shape[1:])).astype("float32"))
    y = tf.constant(rng.integers(0, 10, sequence.BATCH).astype("int32"))
    steps = {
        "weights only": speed.train_step(quantized(model, None)),
        "int8 activations": speed.train_step(quantized(model, "int8")),
    }
    for step in steps.values():
        for _ in range(3):
            step(x, y).numpy()
    times = speed.interleaved_times(steps, x, y, rounds, block)
    out = {k: float(np.median(t)) for k, t in times.items()}
    ratios = np.asarray(times["int8 activations"]) / np.asarray(times["weights only"])
    out["ratio"] = float(np.median(ratios))
    return out


_STEPS_CHILD = """
import json, sys
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from benchmarks import agreement
print(json.dumps(agreement.time_steps(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
"""


def run_steps(models, rounds: int = STEP_ROUNDS, block: int = STEP_BLOCK) -> dict:
    """`{model: time_steps(model)}`, each model in a fresh process with one TensorFlow thread."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    out = {}
    for name in models:
        res = subprocess.run(
            [sys.executable, "-c", _STEPS_CHILD, name, str(rounds), str(block)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"Timing {name} failed:\n{res.stderr[-3000:]}")
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --- tables ----------------------------------------------------------------------------


def _pct(values) -> str:
    return common.fmt_pct(values)


def files_table(result) -> str:
    rows = []
    for (name, how, fmt), recs in result["files"].items():
        gaps = [r["file"] - r["keras"] for r in recs]
        rows.append(
            (
                name,
                how,
                fmt,
                _pct(result["float"][name]),
                _pct([r["keras"] for r in recs]),
                _pct([r["file"] for r in recs]),
                f"{100 * np.mean(gaps):+.2f}",
                _pct([r["agree"] for r in recs]),
                f"{100 * min(r['agree'] for r in recs):.2f}",
                _pct([r["report_agree"] for r in recs]),
                f"{sum(r['within'] for r in recs)}/{len(recs)}",
            )
        )
    return common.md_table(
        (
            "model",
            "activation ranges",
            "format",
            "float model % (Keras)",
            "QAT model % (Keras)",
            "file %",
            "file - Keras (points)",
            "top-1 agreement, test set %",
            "lowest seed %",
            f"top-1 agreement, report ({CALIBRATION} calibration inputs) %",
            "report within its limit (seeds)",
        ),
        rows,
    )


def steps_table(steps) -> str:
    return common.md_table(
        ("model", "weight-only QAT step (ms)", "int8-activation QAT step (ms)", "ratio"),
        [
            (
                name,
                f"{1e3 * s['weights only']:.1f}",
                f"{1e3 * s['int8 activations']:.1f}",
                f"{s['ratio']:.2f}",
            )
            for name, s in steps.items()
        ],
    )


def targets(result, steps) -> list[tuple[str, str, str]]:
    rows = []
    for (name, how, fmt), recs in result["files"].items():
        agree = np.mean([r["agree"] for r in recs])
        low = min(r["agree"] for r in recs)
        rows.append(
            (
                f"{name} {fmt}, {how} ranges: top-1 agreement >= {100 * TOP1_TARGET[how]:g} %",
                f"{100 * agree:.2f} % (lowest seed {100 * low:.2f})",
                "met" if agree >= TOP1_TARGET[how] else "MISSED",
            )
        )
        gap = 100 * (np.mean([r["file"] for r in recs]) - np.mean([r["keras"] for r in recs]))
        rows.append(
            (
                f"{name} {fmt}, {how} ranges: accuracy within {GAP_TARGET[how]:g} point of Keras",
                f"{gap:+.2f} points",
                "met" if abs(gap) <= GAP_TARGET[how] else "MISSED",
            )
        )
    for name, s in steps.items():
        rows.append(
            (
                f"{name}: int8-activation QAT step <= {STEP_TARGET:g}x the weight-only step",
                f"{s['ratio']:.2f}x",
                "met" if s["ratio"] <= STEP_TARGET else "MISSED",
            )
        )
    return rows


def section(result, steps, epochs, seeds, wall: float) -> str:
    out = [
        "## Full-integer files against Keras",
        "",
        f"`python -m benchmarks.agreement --epochs {epochs} --seeds "
        f"{' '.join(map(str, seeds))}` ({wall / 60:.0f} min). {common.environment_line()}",
        "",
        "Models (MNIST-1D, 4,000 training and 1,000 test signals): `cnn` = the accuracy "
        "section's CNN (3 x Conv2D (1, k) + BatchNorm + ReLU, linear); `lstm` / `gru` = "
        "Conv1D(32, k 5, stride 2) -> LSTM(64) / GRU(64) -> Dense(10); `attention` = the "
        "sequence section's attention block. Float: "
        f"{epochs} epochs, Adam, cosine decay from {sequence.PEAK_LR:g}, batch "
        f"{sequence.BATCH}. Then ternary (`td.ternary()`) with the first convolution and the "
        f'logits at `"int8"`, {epochs} fine-tuning epochs from the float model '
        f"(`td.finetune_schedule({sequence.PEAK_LR:g}, steps, warmup=0.1)`), once with "
        "`activations=None` (`calibrated`: the file's activation ranges calibrated at "
        'export) and once with `activations="int8"` (`trained`: the CNN\'s outputs and the '
        "LSTM's and GRU's every gate, state and product fake-quantized on ranges tracked in "
        "training; for the models whose file keeps the trained ranges, all but attention, "
        "also exported with `align_biases=True`: `trained, biases aligned`); the CNN's BatchNorm "
        "statistics re-estimated after the weight-only fine-tuning. Each exported with "
        f"`tflite_export.export(..., representative_data=<{CALIBRATION} training signals>)` "
        "and every weight reported exact. File accuracy and top-1 agreement with Keras on "
        "the 1,000 test signals, run here (`full_int8`: LiteRT; `tflm_packed`: TFLM's "
        "Python interpreter); the report's agreement is on the calibration signals. "
        f"Mean ± standard deviation over {len(seeds)} seeds; `lowest seed`: the smallest "
        "test-set agreement of a seed.",
        "",
        files_table(result),
        "",
        f"Train step (Adam, batch {sequence.BATCH}, random signals, one TensorFlow thread, "
        "CPU time): the weight-only and the int8-activation QAT model of each architecture "
        f"in one process, run in turn {STEP_BLOCK} steps each for {STEP_ROUNDS} rounds; "
        "ratio = median over rounds of int8-activation over weight-only.",
        "",
        steps_table(steps),
        "",
        common.md_table(("target", "measured", "status"), targets(result, steps)),
    ]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12, help="float and fine-tuning epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with library_logs(False):
        result = run(args.epochs, tuple(args.seeds), args.models)
    steps = run_steps(args.models)
    print(section(result, steps, args.epochs, tuple(args.seeds), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
