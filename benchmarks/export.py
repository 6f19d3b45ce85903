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
from tflite_export import pipeline, runners

FORMATS = ("float", "int8", "int4", "full_int8")
#: Our variants also get a `tflm_packed` file (TFLM only: timed on TFLM against
#: the `full_int8` file, not with LiteRT).
OURS_FORMATS = (*FORMATS, "tflm_packed")
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
    """`(bytes, bits per weight stored, report or None)`, or raises
    `tflite_export.ExportError`."""
    rep = data[0][:200]
    if fmt == "TFLiteConverter":
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return bytes(conv.convert()), 8.0, None
    if variant.kind != "ours":
        out = pipeline.convert_bytes(model, fmt, representative_data=rep).data
        return out, float(FORMAT_BITS[fmt]), None
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        report = tflite_export.export(model, path, format=fmt, representative_data=rep)
        n = sum(w.count for w in report.weights)
        bits = sum(w.count * w.stored_bits for w in report.weights) / max(1, n)
        return path.read_bytes(), bits, report


def _interpreter(model_bytes: bytes, sample: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    runners.require_litert(model_bytes)  # tflm_packed files: only TFLM runs them
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
            formats = {"tfmot_qat": ("float", "TFLiteConverter"), "ours": OURS_FORMATS}.get(
                v.kind, FORMATS
            )
            files, found = {}, []
            for fmt in formats:
                try:
                    if v.kind == "tfmot_qat" and fmt == "float":
                        raw = tf.lite.TFLiteConverter.from_keras_model(model).convert()
                        b, bits, report = bytes(raw), 32.0, None
                    else:
                        b, bits, report = convert(model, v, fmt, data)
                except tflite_export.ExportError as e:
                    reason = str(e).split(";")[0].split("\n")[0]
                    rows.append(dict(task=task, variant=name, format=fmt, error=reason))
                    continue
                if fmt != "tflm_packed":
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
                        tflm=report.tflm if fmt == "tflm_packed" else None,
                    )
                )
            lat = latencies(files, data[2][0], settings.latency_rounds)
            for r in found:
                if r["tflm"] is not None:
                    continue
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
        t = r.get("tflm")
        if t is not None:
            # LiteRT cannot run it: TFLM latency, against the full_int8 file on TFLM.
            latency = f"TFLM {1e6 * t.latency_s:.1f}"
            ratio = f"{t.latency_s / t.full_int8_latency_s:.2f} vs full_int8 (TFLM)"
        else:
            latency, ratio = f"{1e6 * r['latency']:.1f}", f"{r['latency_ratio']:.2f}"
        out.append(
            (
                r["variant"],
                r["format"],
                f"{r['bytes']:,}",
                f"{r['gzip']:,}",
                f"{r['bits']:.1f}",
                r["needed"],
                f"{32 / r['bits']:.1f}",
                latency,
                ratio,
            )
        )
    return common.md_table(headers, out)


def notes(rows: list[dict]) -> list[str]:
    """Why some files were not written."""
    return sorted({f"{r['variant']} as {r['format']}: {r['error']}" for r in rows if "error" in r})


# --- tflm_packed: the size targets ------------------------------------------------------

#: name -> (model builder, quantizer, float / packed target)
PACKED_MODELS = {
    "binary (mean_abs) MLP 64-512-512-10": ("mlp", lambda td: td.binary(scale="mean_abs"), 20),
    "ternary MLP 64-512-512-10": ("mlp", lambda td: td.ternary(), 12),
    "power_of_two(3) (mean_abs) MLP 64-512-512-10": (
        "mlp",
        lambda td: td.power_of_two(bits=3, scale="mean_abs"),
        8,
    ),
    "ternary MobileNetV2 alpha 0.35 (weights=None), 32x32x3": (
        "mobilenetv2",
        lambda td: td.ternary(),
        6,
    ),
}


def _packed_model(kind: str):
    from tfmot_discrete import keras  # noqa: PLC0415

    if kind == "mlp":
        inp = keras.Input((64,))
        x = keras.layers.Dense(512, activation="relu")(inp)
        x = keras.layers.Dense(512, activation="relu")(x)
        return keras.Model(inp, keras.layers.Dense(10)(x)), True
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    return model, False


def _digit_images(x: np.ndarray) -> np.ndarray:
    """8x8 digits as 32x32x3 images (each pixel a 4x4 block, gray in 3 channels)."""
    img = np.kron(x.reshape(-1, 8, 8), np.ones((4, 4), np.float32))
    return np.repeat(img[..., None], 3, axis=3).astype(np.float32)


def packed_run(settings: common.Settings, log=print) -> list[dict]:
    """Trains each size-target model briefly on digits, exports `tflm_packed`."""
    import tfmot_discrete as td  # noqa: PLC0415
    from tfmot_discrete import keras  # noqa: PLC0415

    x_train, y_train, x_test, _ = common.digits()
    rows = []
    for name in settings.packed_models:
        kind, make_q, target = PACKED_MODELS[name]
        keras.utils.set_random_seed(0)
        model, logits = _packed_model(kind)
        qat = td.quantize_model(model, make_q(td))
        x = x_train if kind == "mlp" else _digit_images(x_train)
        xt = x_test if kind == "mlp" else _digit_images(x_test)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
        qat.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        epochs = settings.packed_epochs if kind == "mlp" else max(1, settings.packed_epochs // 3)
        qat.fit(x, y_train, epochs=epochs, batch_size=64, verbose=0)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                report = tflite_export.export(
                    qat,
                    pathlib.Path(tmp) / "m.tflite",
                    format="tflm_packed",
                    representative_data=xt[:64],
                )
            except tflite_export.ExportError as e:
                rows.append(dict(model=name, target=target, error=str(e).splitlines()[0]))
                continue
        used = [int(np.unique(w.table).size) for w in report.weights]
        rows.append(
            dict(
                model=name,
                target=target,
                epochs=epochs,
                float=report.float_size_bytes,
                full_int8=report.full_int8_size_bytes,
                packed=report.size_bytes,
                bits=sorted({w.index_bits for w in report.weights}),
                values=sorted(set(used)),
                tflm=report.tflm,
            )
        )
        log(f"  tflm_packed {name}: {report.size_bytes:,} B ({report.size_ratio:.1f}x)")
    return rows


def packed_table(rows: list[dict]) -> str:
    headers = (
        "model",
        "float bytes",
        "full_int8 bytes",
        "tflm_packed bytes",
        "float / packed",
        "target",
        "index bits",
        "values per table",
        "TFLM outputs",
        "TFLM arena full_int8 / packed",
        "TFLM µs full_int8 / packed",
    )
    out = []
    for r in rows:
        if "error" in r:
            out.append((r["model"], *["-"] * 4, f">= {r['target']}", *["-"] * 4, r["error"]))
            continue
        t = r["tflm"]
        out.append(
            (
                r["model"],
                f"{r['float']:,}",
                f"{r['full_int8']:,}",
                f"{r['packed']:,}",
                f"{r['float'] / r['packed']:.1f}",
                f">= {r['target']}",
                "/".join(str(b) for b in r["bits"]),
                "/".join(str(v) for v in r["values"]),
                f"identical on {t.samples}" if t.identical else f"differ by {t.max_lsb} LSB",
                f"{t.full_int8_arena_bytes:,} / {t.arena_bytes:,}",
                f"{1e6 * t.full_int8_latency_s:.0f} / {1e6 * t.latency_s:.0f}",
            )
        )
    return common.md_table(headers, out)


def packed_targets(rows: list[dict]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        goal = f"float / tflm_packed >= {r['target']}, {r['model']}, TFLM outputs identical"
        if "error" in r:
            out.append((goal, r["error"], "MISSED"))
            continue
        ratio = r["float"] / r["packed"]
        ok = ratio >= r["target"] and r["tflm"].identical
        out.append((goal, f"{ratio:.1f}", "met" if ok else "MISSED"))
    return out
