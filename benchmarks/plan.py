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
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tflite_export  # noqa: E402
import tfmot_discrete as td  # noqa: E402
from benchmarks import accuracy, common, finetune  # noqa: E402
from tflite_export import convert, runners  # noqa: E402
from tfmot_discrete._keras import keras  # noqa: E402
from tfmot_discrete.plan import PlanError  # noqa: E402

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


def _fine_tune_and_export(float_model, p, task, data, epochs, seed, tmp):
    model = td.quantize_model(float_model, p.mapping)
    recipe = finetune.DEFAULT
    accuracy.train(model, data, epochs, task, seed, recipe, teacher=float_model)
    finetune.recalibrate(model, data[0], task.batch)
    path = pathlib.Path(tmp) / "m.tflite"
    report = tflite_export.export(model, path, representative_data=data[0][:200], **p.export_kwargs)
    file_acc = _tflm_accuracy(path.read_bytes(), data[2], data[3])
    return report.budget, file_acc, accuracy.evaluate(model, data)


def run(seeds, epochs, tasks, log=print) -> list[Record]:
    records = []
    for name in tasks:
        task = accuracy.TASKS[name]
        data = task.load()
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            float_model = task.arch()
            accuracy.train(float_model, data, epochs, task, seed, finetune.FLOAT)
            finetune.recalibrate(float_model, data[0], task.batch)
            float_acc = accuracy.evaluate(float_model, data)
            float_bytes = len(convert.float_tflite(float_model))
            log(f"{name} seed {seed}: float {100 * float_acc:.2f} %, file {float_bytes:,} B")
            records.append(
                Record(
                    name,
                    seed,
                    1,
                    float_bytes,
                    "float",
                    True,
                    float_bytes,
                    None,
                    float_acc,
                    float_acc,
                )
            )
            plan_data = (data[0][-PLAN_SAMPLES:], data[1][-PLAN_SAMPLES:])
            done = {}  # (mapping, export kwargs) -> result: a uniform plan repeats across budgets
            for fraction in FRACTIONS[name]:
                flash = float_bytes // fraction
                variants = [("planned", list(CANDIDATES.values()))]
                variants += [(f"uniform {k}", [c]) for k, c in CANDIDATES.items()]
                for variant, cands in variants:
                    t0 = time.perf_counter()
                    try:
                        p = td.plan(
                            float_model, plan_data, flash=flash, candidates=cands, print_fn=None
                        )
                    except PlanError as e:
                        records.append(
                            Record(
                                name, seed, fraction, flash, variant, False, min_flash=e.min_flash
                            )
                        )
                        log(f"  1/{fraction} {variant}: does not fit (>= {e.min_flash:,} B)")
                        continue
                    key = (_mapping_text(p), repr(sorted(p.export_kwargs.get("pack", []))))
                    if key not in done:
                        with tempfile.TemporaryDirectory() as tmp:
                            done[key] = _fine_tune_and_export(
                                float_model, p, task, data, epochs, seed, tmp
                            )
                    b, acc, keras_acc = done[key]
                    records.append(
                        Record(
                            name,
                            seed,
                            fraction,
                            flash,
                            variant,
                            True,
                            b.file_bytes,
                            b.arena_bytes,
                            acc,
                            keras_acc,
                            mapping=key[0],
                        )
                    )
                    log(
                        f"  1/{fraction} {variant}: {b.file_bytes:,} B, arena {b.arena_bytes:,} B, "
                        f"TFLM {100 * acc:.2f} % ({time.perf_counter() - t0:.0f} s) [{key[0]}]"
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
                    low = min(r.min_flash for r in rs if not r.fits)
                    rows.append([task, variant, budget, "-", f"does not fit (>= {low:,} B)"])
                    continue
                m, s = common.mean_std([100 * r.accuracy for r in rs])
                size = f"{int(np.mean([r.file_bytes for r in rs])):,}"
                rows.append([task, variant, budget, size, f"{m:.2f} ± {s:.2f}"])
    return common.md_table(
        ["task", "model", "flash budget (B)", "file (B)", "TFLM test accuracy %"], rows
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.plan", description=__doc__.splitlines()[0]
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--tasks", nargs="+", default=list(accuracy.TASKS), choices=list(accuracy.TASKS))
    p.add_argument("--out", type=pathlib.Path, default=HERE)
    args = p.parse_args(argv)
    start = time.perf_counter()
    records = run(range(args.seeds), args.epochs, args.tasks)
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
