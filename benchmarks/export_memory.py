"""Export cost of large models: time and peak resident memory, split by step.

    python -m benchmarks.export_memory [--weights 1,18,70] [--formats int8,full_int8]

Each (size, format) runs in a fresh process: a ternary MLP `256-h-h-10` with
about 1, 18 or 70 million weights (`td.ternary()`, untrained) is exported with
`tflite_export.export`. The baseline is the resident set after importing
TensorFlow and both packages and one export of a tiny model (which loads the
converter's libraries), before the large model is built; the export's own
peak is counted from the resident set once the QAT model is built (what a
user holds before calling `export`: building a tf_keras model of N float32
weights alone grows the process by several times 4N bytes). A thread samples the
resident set every 5 ms; each step of the export is timed and its peak taken:
the TFLite converter and ai-edge-quantizer ("converter") against this
package's own steps (stripping and reading the model, reading, matching and
patching the flatbuffer, verifying).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Sampler:
    """Peak resident set, sampled in a thread; `mark()` starts a new window."""

    def __init__(self, period=0.005):
        self.period = period
        self.peak = _rss()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            r = _rss()
            if r > self.peak:
                self.peak = r
            time.sleep(self.period)

    def mark(self) -> int:
        now = _rss()
        self.peak = now
        return now

    def stop(self):
        self._stop = True
        self._thread.join()


# (module, attribute, step group) of every step the export takes; nested calls
# are counted in the outermost one.
STEPS = (
    ("tfmot_discrete", "strip_quantization", "ours: strip (project weights)"),
    ("tflite_export.exact", "codebook_weights", "ours: read codebook weights"),
    ("tflite_export.convert", "float_tflite", "converter: float"),
    ("tflite_export.convert", "weight_only_tflite", "converter: ai-edge-quantizer"),
    ("tflite_export.convert", "full_int8_tflite", "converter: full int8"),
    ("tflite_export.convert", "full_int8_from_qat", "converter: full int8"),
    ("tflite_export.exact", "read", "ours: read flatbuffer"),
    ("tflite_export.exact", "match_weights", "ours: match"),
    ("tflite_export.exact", "locate", "ours: match"),
    ("tflite_export.exact", "write_exact", "ours: patch"),
    ("tflite_export.exact", "write", "ours: write flatbuffer"),
    ("tflite_export.pipeline", "check_weights", "ours: verify weights (LiteRT)"),
    ("tflite_export.verify", "run_litert", "ours: verify outputs (LiteRT)"),
    ("tflite_export.pipeline", "run_tflm", "ours: verify outputs (TFLM)"),
    ("tflite_export.pipeline", "run_litert_raw", "ours: verify outputs (TFLM)"),
    ("tflite_export.pipeline", "_atomic_write", "ours: write file"),
)


def _instrument(sampler, records):
    import importlib  # noqa: PLC0415

    depth = [0]

    def wrap(fn, group):
        @functools.wraps(fn)
        def inner(*a, **k):
            if depth[0]:
                return fn(*a, **k)
            depth[0] += 1
            start = sampler.mark()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                rec = records.setdefault(group, {"s": 0.0, "peak": 0, "rise": 0})
                rec["s"] += time.perf_counter() - t
                rec["peak"] = max(rec["peak"], sampler.peak)
                rec["rise"] = max(rec["rise"], sampler.peak - start)

        return inner

    for module, name, group in STEPS:
        mod = importlib.import_module(module)
        fn = getattr(mod, name, None)
        if fn is not None:
            setattr(mod, name, wrap(fn, group))


def hidden_width(n_weights: float) -> int:
    """`h` so that a 256-h-h-10 MLP has about `n_weights` weights."""
    return int(round((-266 + math.sqrt(266**2 + 4 * n_weights)) / 2))


def child(millions: float, fmt: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tflite_export  # noqa: PLC0415
    import tfmot_discrete as td  # noqa: PLC0415
    from tfmot_discrete import keras  # noqa: PLC0415

    L = keras.layers

    def mlp(h):
        keras.utils.set_random_seed(0)
        inp = keras.Input((256,))
        x = L.Dense(h, activation="relu")(inp)
        x = L.Dense(h, activation="relu")(x)
        return td.quantize_model(keras.Model(inp, L.Dense(10)(x)), td.ternary())

    rep = np.random.default_rng(0).normal(size=(32, 256)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tflite_export.export(mlp(16), os.path.join(tmp, "w.tflite"), fmt, representative_data=rep)
        keras.backend.clear_session()
        sampler = _Sampler()
        baseline = sampler.mark()
        qat = mlp(hidden_width(millions * 1e6))
        n = sum(int(np.prod(w.shape)) for w in qat.trainable_weights if "kernel" in w.name)
        model_rss = sampler.mark() - baseline
        records = {}
        _instrument(sampler, records)
        sampler.mark()
        t = time.perf_counter()
        report = tflite_export.export(
            qat, os.path.join(tmp, "m.tflite"), fmt, representative_data=rep
        )
        total = time.perf_counter() - t
        peak = max([sampler.peak] + [r["peak"] for r in records.values()])
        sampler.stop()
    return {
        "weights": n,
        "format": fmt,
        "float_mb": 4 * n / MB,
        "file_mb": report.size_bytes / MB,
        "exact": report.exact,
        "baseline_mb": baseline / MB,
        "model_mb": model_rss / MB,
        "seconds": total,
        "peak_mb": (peak - baseline) / MB,
        "steps": {
            k: {"s": v["s"], "peak_mb": (v["peak"] - baseline) / MB, "rise_mb": v["rise"] / MB}
            for k, v in records.items()
        },
    }


def run(sizes, formats) -> list[dict]:
    rows = []
    for m in sizes:
        for fmt in formats:
            res = subprocess.run(
                [sys.executable, "-m", "benchmarks.export_memory", "--child", str(m), fmt],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                print(f"{m} M {fmt}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_table([row], header=not rows[:-1]), flush=True)
    return rows


def _table(rows, header=True) -> str:
    lines = []
    if header:
        lines += [
            "| weights | format | float MB | s | s / M weights | model built MB (x float) "
            "| export peak beyond the built model MB | x float | peak beyond TF baseline "
            "x float | converter s | converter rise x float | our steps s "
            "| our steps rise x float (worst step) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        conv = {k: v for k, v in r["steps"].items() if k.startswith("converter")}
        ours = {k: v for k, v in r["steps"].items() if k.startswith("ours")}
        worst = max(ours.items(), key=lambda kv: kv[1]["rise_mb"])
        f = r["float_mb"]
        export_peak = r["peak_mb"] - r["model_mb"]
        lines.append(
            f"| {r['weights'] / 1e6:.1f} M | {r['format']} | {f:.0f} | {r['seconds']:.1f} "
            f"| {r['seconds'] / (r['weights'] / 1e6):.2f} "
            f"| {r['model_mb']:.0f} ({r['model_mb'] / f:.1f}) | {export_peak:.0f} "
            f"| {export_peak / f:.1f} | {r['peak_mb'] / f:.1f} "
            f"| {sum(v['s'] for v in conv.values()):.1f} "
            f"| {max(v['rise_mb'] for v in conv.values()) / f:.1f} "
            f"| {sum(v['s'] for v in ours.values()):.1f} "
            f"| {worst[1]['rise_mb'] / f:.2f} ({worst[0][6:]}) |"
        )
    return "\n".join(lines)


def steps_table(rows) -> str:
    lines = ["| weights | format | step | s | peak beyond baseline MB | rise during step MB |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        for k, v in r["steps"].items():
            lines.append(
                f"| {r['weights'] / 1e6:.1f} M | {r['format']} | {k} | {v['s']:.2f} "
                f"| {v['peak_mb']:.0f} | {v['rise_mb']:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="1,18,70", help="millions of weights, comma-separated")
    p.add_argument("--formats", default="int8,full_int8")
    p.add_argument("--child", nargs=2, metavar=("MILLIONS", "FORMAT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(float(args.child[0]), args.child[1])))
        return
    rows = run([float(s) for s in args.weights.split(",")], args.formats.split(","))
    print()
    print(steps_table(rows))


if __name__ == "__main__":
    main()
