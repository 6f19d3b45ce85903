"""Export: file size, bits per weight and LiteRT latency of each trained model, per format.

The models are the first seed's from the accuracy run. Our variants go
through `tflite_export.export` (which verifies that every codebook weight is
exact); float, clustered and TF-MOT models are converted without that check
(their weights are not on a codebook), TF-MOT's 8-bit QAT model through its
own path, `TFLiteConverter` with `Optimize.DEFAULT`.
"""

from __future__ import annotations

import gzip
import pathlib
import tempfile
import time

import numpy as np
import tensorflow as tf

import tflite_export
from benchmarks import common
from tflite_export import pipeline

FORMATS = ("float", "int8", "int4", "full_int8")
FORMAT_BITS = {"float": 32, "int8": 8, "int4": 4, "full_int8": 8, "TFLiteConverter": 8}
DEFAULT_VARIANTS = (
    "float",
    "binary, scale=None",
    "binary, mean_abs",
    "ternary, mean_abs",
    "[1, -1, 0.5, -0.5]",
    "power_of_two(bits=3)",
    "TF-MOT clustering, 4 clusters",
    "TF-MOT 8-bit QAT",
)


def convert(model, variant: common.Variant, fmt: str, data):
    """`(bytes, bits per weight stored)`, or raises `tflite_export.ExportError`."""
    rep = data[0][:200]
    if fmt == "TFLiteConverter":
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return bytes(conv.convert()), 8.0
    if variant.kind != "ours":
        out = pipeline.convert_bytes(model, fmt, representative_data=rep).data
        return out, float(FORMAT_BITS[fmt])
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        report = tflite_export.export(model, path, format=fmt, representative_data=rep)
        n = sum(w.count for w in report.weights)
        bits = sum(w.count * w.stored_bits for w in report.weights) / max(1, n)
        return path.read_bytes(), bits


def _interpreter(model_bytes: bytes, sample: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = sample[None].astype(np.float32)
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    return it


def latencies(files: dict[str, bytes], sample: np.ndarray, rounds: int, block: int = 20):
    """Median seconds per single-sample invoke of each file, interleaved (1 thread)."""
    its = {name: _interpreter(b, sample) for name, b in files.items()}
    for it in its.values():
        for _ in range(block):
            it.invoke()
    times = {name: [] for name in its}
    for _ in range(rounds):
        for name, it in its.items():
            t0 = time.perf_counter()
            for _ in range(block):
                it.invoke()
            times[name].append((time.perf_counter() - t0) / block)
    return {name: float(np.median(t)) for name, t in times.items()}


def run(settings: common.Settings, accuracy_result: dict, log=print) -> list[dict]:
    """One row per (dataset, variant, format)."""
    names = settings.export_variants or DEFAULT_VARIANTS
    variants = {v.name: v for v in common.accuracy_variants()}
    rows = []
    for task, data in accuracy_result["data"].items():
        for name in names:
            model = accuracy_result["models"].get((task, name))
            if model is None:
                continue
            v = variants[name]
            formats = ("float", "TFLiteConverter") if v.kind == "tfmot_qat" else FORMATS
            files, found = {}, []
            for fmt in formats:
                try:
                    if v.kind == "tfmot_qat" and fmt == "float":
                        raw = tf.lite.TFLiteConverter.from_keras_model(model).convert()
                        b, bits = bytes(raw), 32.0
                    else:
                        b, bits = convert(model, v, fmt, data)
                except tflite_export.ExportError as e:
                    reason = str(e).split(";")[0].split("\n")[0]
                    rows.append(dict(task=task, variant=name, format=fmt, error=reason))
                    continue
                files[fmt] = b
                found.append(
                    dict(
                        task=task,
                        variant=name,
                        format=fmt,
                        bytes=len(b),
                        gzip=len(gzip.compress(b, 9)),
                        bits=bits,
                        needed=v.bits,
                    )
                )
            lat = latencies(files, data[2][0], settings.latency_rounds)
            for r in found:
                r["latency"] = lat[r["format"]]
                r["latency_ratio"] = lat[r["format"]] / lat["float"]
            rows.extend(found)
            log(
                f"  export {task} {name}: "
                + ", ".join(f"{k} {len(b):,} B" for k, b in files.items())
            )
    return rows


def table(rows: list[dict], task: str) -> str:
    headers = (
        "variant",
        "format",
        "file bytes",
        "gzip bytes",
        "bits/weight stored",
        "ceil(log2 K)",
        "float32 / stored",
        "latency µs (1 sample)",
        "latency vs float file",
    )
    out = []
    for r in rows:
        if r["task"] != task:
            continue
        if "error" in r:
            out.append((r["variant"], r["format"], "not written", "-", "-", "-", "-", "-", "-"))
            continue
        out.append(
            (
                r["variant"],
                r["format"],
                f"{r['bytes']:,}",
                f"{r['gzip']:,}",
                f"{r['bits']:.1f}",
                r["needed"],
                f"{32 / r['bits']:.1f}",
                f"{1e6 * r['latency']:.1f}",
                f"{r['latency_ratio']:.2f}",
            )
        )
    return common.md_table(headers, out)


def notes(rows: list[dict]) -> list[str]:
    """Why some files were not written."""
    return sorted({f"{r['variant']} as {r['format']}: {r['error']}" for r in rows if "error" in r})
