"""Fit the board: a trained model, a flash and a RAM budget, and a verified TFLM file that fits.

A microcontroller says "the model gets 32 KiB of flash and 96 KiB of RAM".
`td.plan` turns those two numbers into a codebook and a packing choice per
layer (TFLM's `DECODE` expands a packed weight into the arena before its
layer runs, so packing trades RAM for flash); the plan's `.mapping` goes to
`td.quantize_model`, the model is fine-tuned (`td.finetune_schedule`,
`td.RecalibrateBatchNorm`), and the plan's `.export_kwargs` go to
`tflite_export.export`, which measures the file and its arena on TFLM and
refuses a file that does not fit. Beside it, every uniform choice is tried
on the same board: those that fit are fine-tuned and scored the same way.

    python examples/fit_the_board.py [--flash 32KiB] [--ram 96KiB] [--epochs 30] [--out out/fit]

The model: the digits MLP 64-256-256-10 with BatchNorm (float file about
345 KB, `full_int8` about 95 KB: neither fits 32 KiB).
"""

from __future__ import annotations

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from from_trained_model import accuracy, compile_and_fit

import tflite_export
import tfmot_discrete as td
from tflite_export import budget, runners
from tfmot_discrete.tools.plan import PlanError
from tfmot_discrete_demo.digits import load_digits_split

keras = td.keras
L = keras.layers

UNIFORM = {
    "binary (mean_abs)": td.binary(scale="mean_abs"),
    "ternary": td.ternary(),
    "{±1, ±0.5} (mean_abs)": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
    "int8": "int8",
}


def mlp() -> keras.Model:
    inp = keras.Input((64,), name="pixels")
    x = inp
    for i in range(2):
        x = L.Dense(256, name=f"dense_{i}")(x)
        x = L.BatchNormalization(name=f"bn_{i}")(x)
        x = L.ReLU(name=f"relu_{i}")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="digits_mlp")


def tflm_accuracy(path, x, y) -> float:
    """Top-1 accuracy of the file on TFLM (the interpreter of the board)."""
    logits = runners.run_tflm(pathlib.Path(path).read_bytes(), [x], dequantize=True)[0]
    return float(np.mean(np.argmax(logits, -1) == y))


def fine_tune_and_export(model, p, data, epochs, path, verbose):
    """`quantize_model(plan.mapping)`, the recipe, `export(**plan.export_kwargs)`."""
    xtr, ytr, xte, yte = data
    qat = td.quantize_model(model, p.mapping)
    compile_and_fit(qat, xtr, ytr, epochs, verbose, 0.1, [td.RecalibrateBatchNorm(xtr)])
    report = tflite_export.export(qat, path, representative_data=xtr[:200], **p.export_kwargs)
    return accuracy(qat, xte, yte), tflm_accuracy(path, xte, yte), report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flash", default="32KiB", help="flash for the file (default 32KiB)")
    parser.add_argument("--ram", default="96KiB", help="RAM for TFLM's arena (default 96KiB)")
    parser.add_argument("--epochs", type=int, default=30, help="float and fine-tuning epochs")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/fit"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    flash, ram = budget.parse_size(args.flash, "flash"), budget.parse_size(args.ram, "ram")
    args.out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = data = load_digits_split(0)

    model = mlp()
    compile_and_fit(model, xtr, ytr, args.epochs, args.verbose, 0.0)
    float_acc = accuracy(model, xte, yte)
    print(f"float model: test accuracy {100 * float_acc:.2f}%")
    print(f"board: flash {flash:,} bytes, RAM {ram:,} bytes\n")

    # The plan's losses are measured on held-out training data, not the test set.
    plan_data = (xtr[-300:], ytr[-300:])
    results = []
    p = td.plan(model, plan_data, flash=flash, ram=ram)
    keras_acc, file_acc, report = fine_tune_and_export(
        model, p, data, args.epochs, args.out / "planned.tflite", args.verbose
    )
    print(report)
    results.append(("planned", report.budget.file_bytes, report.budget.arena_bytes, file_acc))

    for name, q in UNIFORM.items():
        try:
            u = td.plan(model, plan_data, flash=flash, ram=ram, candidates=[q], print_fn=None)
        except PlanError as e:
            print(f"uniform {name}: does not fit ({e.min_flash:,} bytes of flash at least)")
            results.append((f"uniform {name}", e.min_flash, None, None))
            continue
        path = args.out / f"uniform_{len(results)}.tflite"
        _, acc, rep = fine_tune_and_export(model, u, data, args.epochs, path, args.verbose)
        results.append((f"uniform {name}", rep.budget.file_bytes, rep.budget.arena_bytes, acc))

    print(f"\nOn the board (flash {flash:,} B, RAM {ram:,} B), TFLM test accuracy:")
    for name, size, arena, acc in results:
        if acc is None:
            print(f"  {name:28s} does not fit: estimated file >= {size:,} B")
        else:
            print(f"  {name:28s} file {size:,} B, arena {arena:,} B: {100 * acc:.2f}%")
    print(
        f"planned: Keras {100 * keras_acc:.2f}%, TFLM {100 * file_acc:.2f}%, float {100 * float_acc:.2f}%"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
