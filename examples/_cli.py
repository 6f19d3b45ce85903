"""How the examples start and end (not an example itself).

The start: every example takes `--out` and `--verbose`, most `--epochs`.
Without `--verbose`, what TensorFlow, the converters and the interpreters log
is kept out of sight (`tflite_export.logs.library_logs`), from the import that
loads TensorFlow to the end of the run. The end: the `.tflite` file written,
its report printed, and the file scored on the test set by LiteRT.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

import tflite_export
from tflite_export import runners
from tflite_export.logs import library_logs

VERBOSE_HELP = (
    "Keras' per-epoch output, and what TensorFlow, the converters and the interpreters log"
)


def quiet_imports():
    """A block for the imports that load TensorFlow: its start-up lines are
    kept out too, unless the command line holds `--verbose`."""
    return library_logs("--verbose" in sys.argv[1:])


def parser(doc: str, out: str, epochs: int | None = None, epochs_help: str = "training epochs"):
    """An `argparse` parser described by the first line of `doc`, with
    `--epochs` (when `epochs` is given, as its default), `--out` and `--verbose`;
    the example adds its own arguments to it."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if epochs is not None:
        p.add_argument(
            "--epochs", type=int, default=epochs, help=f"{epochs_help} (default {epochs})"
        )
    p.add_argument("--out", default=out, help=f"output directory (default {out})")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def run(parser: argparse.ArgumentParser, body, argv=None) -> int:
    """Parses `argv` (the command line when None) and returns `body(args)`,
    run with the libraries' log lines kept out unless `--verbose`."""
    args = parser.parse_args(argv)
    with library_logs(args.verbose):
        return body(args)


def litert_accuracy(path, x, y) -> float:
    """Top-1 accuracy of a `.tflite` file, run by LiteRT one sample at a time
    (int8 inputs quantized with the file's own parameters)."""
    logits = runners.run_litert(pathlib.Path(path).read_bytes(), [x])[0]
    return float(np.mean(np.argmax(logits, -1) == y))


def export_and_score(model, path, x, y, **export_args) -> int:
    """Writes `path` with `tflite_export.export(model, path, **export_args)`,
    prints the report and the file's LiteRT accuracy on `(x, y)`.

    Returns:
        The example's exit status: 0 when every check passed and every
        codebook weight is exact, 1 otherwise.
    """
    report = tflite_export.export(model, path, **export_args)
    print(report)
    print(f"{path}: LiteRT test accuracy {litert_accuracy(path, x, y):.2%}")
    return 0 if report.ok and report.exact else 1
