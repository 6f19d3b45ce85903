"""`python -m benchmarks.plan [--seeds 3] [--epochs 30] [--out DIR]`: `td.plan` against uniform codebooks.

For each dataset of `benchmarks.accuracy.TASKS` and seed: the float model
(its own recipe), then for flash budgets that are fractions of the float
`.tflite` file (`FRACTIONS`: 1/8, 1/12, 1/16 for the digits MLP), the plan of `td.plan` (binary `mean_abs`, ternary,
`{±1, ±0.5}` `mean_abs` and `"int8"` per layer, packed or not) and every
uniform codebook that fits the same budget (`td.plan` with that one
candidate, so the packing is chosen the same way). Each is fine-tuned with
the default recipe (from float, cosine with 10 % warmup, BatchNorm
re-estimated), exported with the plan's `export_kwargs` (the file is
measured and refused if over budget) and scored on TFLM. Writes
`plan.md` (the table) and `plan.json` (every record) into `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tflite_export
import tfmot_discrete as td
from benchmarks import accuracy, common, finetune
from tflite_export import convert, runners
from tfmot_discrete.tfk import configs, keras
from tfmot_discrete.tools.plan import PlanError

HERE = pathlib.Path(__file__).resolve().parent
#: Flash budgets, as fractions of the float file. The MNIST-1D CNN's smallest file
#: (every layer binary and packed) is 1/5.5 of its float file: 1/8 is out of reach.
FRACTIONS = {"digits": (8, 12, 16), "mnist1d": (3, 4, 5)}
CANDIDATES = {
    "binary": td.binary(scale="mean_abs"),
    "ternary": td.ternary(),
    "four": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
    "int8": "int8",
}
#: Samples of the training set (its end) the plan measures losses on.
PLAN_SAMPLES = 500


@dataclasses.dataclass
class Record:
    task: str
    seed: int
    fraction: int
    flash: int
    variant: str  # "planned" or "uniform <candidate>"
    fits: bool
    file_bytes: int | None = None
    arena_bytes: int | None = None
    accuracy: float | None = None  # TFLM, test set
    keras_accuracy: float | None = None
    min_flash: int | None = None  # when it does not fit
    mapping: str = ""


def _tflm_accuracy(data: bytes, x, y) -> float:
    logits = runners.run_tflm(data, [x], dequantize=True)[0]
    return float(np.mean(np.argmax(logits, -1) == y))


def _mapping_text(p) -> str:
    return ", ".join(f"{r.layer}: {r.choice}{' packed' if r.packed else ''}" for r in p.rows)


def _fine_tune_and_export(float_model, mapping, export_kwargs, task, data, epochs, seed):
    """The recipe on `quantize_model(float_model, mapping)`, then the measured file."""
    model = td.quantize_model(float_model, mapping)
    accuracy.train(model, data, epochs, task, seed, finetune.DEFAULT, teacher=float_model)
    finetune.recalibrate(model, data[0], task.batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "m.tflite"
        kwargs = {**export_kwargs, "flash": 1 << 30}  # measured, compared with budgets after
        report = tflite_export.export(model, path, representative_data=data[0][:200], **kwargs)
        file_acc = _tflm_accuracy(path.read_bytes(), data[2], data[3])
    return report.budget, file_acc, accuracy.evaluate(model, data)


def _uniform(float_model, name):
    """`(mapping, export kwargs)` of one candidate on every layer, every codebook
    weight packed (int8: the full_int8 file)."""
    c = CANDIDATES[name]
    layers = [lay.name for lay in float_model.layers if configs.quantizable_weights(lay)]
    fmt = "full_int8" if c == "int8" else "tflm_packed"
    return {re.escape(n): c for n in layers}, {"format": fmt}


def _uniform_sizes(float_model, data) -> dict[str, int]:
    """File bytes of each uniform choice (the shapes fix them: measured once)."""
    sizes = {}
    for name in CANDIDATES:
        mapping, kwargs = _uniform(float_model, name)
        with tempfile.TemporaryDirectory() as tmp:
            r = tflite_export.export(
                td.quantize_model(float_model, mapping),
                pathlib.Path(tmp) / "u.tflite",
                representative_data=data[0][:200],
                **kwargs,
            )
        sizes[name] = r.size_bytes
    return sizes


def run(seeds, epochs, tasks, log=print) -> list[Record]:
    records = []
    for name in tasks:
        task = accuracy.TASKS[name]
        data = task.load()
        sizes = None
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            float_model = task.arch()
            accuracy.train(float_model, data, epochs, task, seed, finetune.FLOAT)
            finetune.recalibrate(float_model, data[0], task.batch)
            float_acc = accuracy.evaluate(float_model, data)
            float_bytes = len(convert.float_tflite(float_model))
            sizes = sizes or _uniform_sizes(float_model, data)
            log(f"{name} seed {seed}: float {100 * float_acc:.2f} %, file {float_bytes:,} B")
            log(f"  uniform files: {sizes}")
            records.append(
                Record(name, seed, 1, float_bytes, "float", True, float_bytes, None, float_acc)
            )
            plan_data = (data[0][-PLAN_SAMPLES:], data[1][-PLAN_SAMPLES:])
            done = {}  # the same mapping and packing is trained once per seed
            for fraction in FRACTIONS[name]:
                flash = float_bytes // fraction
                choices = []
                t0 = time.perf_counter()
                try:
                    p = td.plan(float_model, plan_data, flash=flash, print_fn=None)
                    choices.append(("planned", p.mapping, p.export_kwargs, _mapping_text(p)))
                    log(f"  1/{fraction}: planned in {time.perf_counter() - t0:.0f} s")
                except PlanError as e:
                    records.append(
                        Record(name, seed, fraction, flash, "planned", False, min_flash=e.min_flash)
                    )
                for u in CANDIDATES:
                    variant = f"uniform {u}"
                    if sizes[u] > flash:
                        records.append(
                            Record(name, seed, fraction, flash, variant, False, min_flash=sizes[u])
                        )
                        continue
                    choices.append((variant, *_uniform(float_model, u), f"{u} everywhere"))
                for variant, mapping, kwargs, text in choices:
                    key = (text, repr(sorted(kwargs.get("pack", ["all"]))))
                    if key not in done:
                        done[key] = _fine_tune_and_export(
                            float_model, mapping, kwargs, task, data, epochs, seed
                        )
                    b, acc, keras_acc = done[key]
                    fits = b.file_bytes <= flash
                    records.append(
                        Record(
                            name,
                            seed,
                            fraction,
                            flash,
                            variant,
                            fits,
                            b.file_bytes,
                            b.arena_bytes,
                            acc,
                            keras_acc,
                            mapping=text,
                        )
                    )
                    log(
                        f"  1/{fraction} {variant}: {b.file_bytes:,} B, arena {b.arena_bytes:,} B, "
                        f"TFLM {100 * acc:.2f} % [{text}]"
                    )
    return records


def table(records: list[Record]) -> str:
    rows = []
    for task in dict.fromkeys(r.task for r in records):
        floats = [r for r in records if r.task == task and r.variant == "float"]
        mean_f, std_f = common.mean_std([100 * r.accuracy for r in floats])
        rows.append(
            [task, "float", f"{floats[0].file_bytes:,}", "-", f"{mean_f:.2f} ± {std_f:.2f}"]
        )
        for fraction in FRACTIONS[task]:
            for variant in ["planned"] + [f"uniform {k}" for k in CANDIDATES]:
                rs = [
                    r
                    for r in records
                    if (r.task, r.fraction, r.variant) == (task, fraction, variant)
                ]
                if not rs:
                    continue
                budget = f"1/{fraction} ({rs[0].flash:,})"
                if not all(r.fits for r in rs):
                    low = min(r.min_flash or r.file_bytes for r in rs if not r.fits)
                    rows.append([task, variant, budget, "-", f"does not fit (>= {low:,} B)"])
                    continue
                m, s = common.mean_std([100 * r.accuracy for r in rs])
                size = f"{int(np.mean([r.file_bytes for r in rs])):,}"
                rows.append([task, variant, budget, size, f"{m:.2f} ± {s:.2f}"])
    lines = [
        common.md_table(
            ["task", "model", "flash budget (B)", "file (B)", "TFLM test accuracy %"], rows
        ),
        "",
        "Targets: the planned model at least as accurate as the best uniform codebook that "
        "fits the same budget; within 1 point of float at 1/8.",
        "",
    ]
    target_rows = []
    for task in dict.fromkeys(r.task for r in records):
        floats = [100 * r.accuracy for r in records if r.task == task and r.variant == "float"]
        for fraction in FRACTIONS[task]:
            at = [r for r in records if (r.task, r.fraction) == (task, fraction)]
            planned = [100 * r.accuracy for r in at if r.variant == "planned" and r.fits]
            if not planned or len(planned) != len({r.seed for r in at}):
                target_rows.append([task, f"1/{fraction}", "no plan fits", "-", "-"])
                continue
            uniform = {}
            for r in at:
                if r.variant.startswith("uniform") and r.fits:
                    uniform.setdefault(r.variant, []).append(100 * r.accuracy)
            best = max(uniform.items(), key=lambda kv: np.mean(kv[1]), default=None)
            gap = np.mean(planned) - (np.mean(best[1]) if best else np.nan)
            target_rows.append(
                [
                    task,
                    f"1/{fraction}",
                    f"{np.mean(planned):.2f}",
                    "-" if best is None else f"{best[0]} {np.mean(best[1]):.2f} ({gap:+.2f})",
                    f"{np.mean(planned) - np.mean(floats):+.2f}",
                ]
            )
    lines.append(
        common.md_table(
            ["task", "budget", "planned %", "best uniform that fits %", "planned - float"],
            target_rows,
        )
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.plan", description=__doc__.splitlines()[0]
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--tasks", nargs="+", default=list(accuracy.TASKS), choices=list(accuracy.TASKS))
    p.add_argument("--out", type=pathlib.Path, default=HERE)
    args = p.parse_args(argv)
    start = time.perf_counter()
    records = run(range(args.first_seed, args.first_seed + args.seeds), args.epochs, args.tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (
        f"## Fit the board: `td.plan` against uniform codebooks\n\n{args.seeds} seeds, "
        f"{args.epochs} epochs (float and fine-tuning), {common.environment_line()}; "
        f"{time.perf_counter() - start:.0f} s.\n\n{table(records)}\n"
    )
    (args.out / "plan.md").write_text(text)
    (args.out / "plan.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in records], indent=1)
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
