"""`tflite-export`: saved Keras model -> verified, codebook-exact `.tflite` file.

    tflite-export MODEL -o OUT --format {float,int8,int4,full_int8,tflm_packed}
        [--target {tflm,litert}] [--representative-data FILE.npy]
        [--c-array FILE.cc] [--tflm-project DIR] [--json FILE.json] [--allow-inexact]
        [--unsafe] [--flash 64KiB] [--ram 32KiB] [--verbose]
    tflite-export verify FILE.tflite --codebook 1,-1,0.5,-0.5 [--model MODEL]
        [--representative-data FILE.npy] [--json FILE.json] [--verbose]

TensorFlow's, the converters' and the interpreters' own log lines are shown
only with `--verbose`. A stage of the export that lasts more than
`progress.AFTER_S` seconds gets one line on stderr with the time elapsed.
Arguments and files are checked before TensorFlow is imported.

Exit status:
    0  the file was written and verified (`verify`: everything checked out);
    1  verification failed (`VerificationError`; nothing written);
    2  bad input, or the model cannot be exported (any other `ExportError`).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from tflite_export import budget, files, project
from tflite_export.errors import (
    ExportError,
    MissingDataError,
    VerificationError,
    require_extras,
)
from tflite_export.formats import FORMATS, TARGETS
from tflite_export.logs import library_logs

PROG = "tflite-export"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _add_verbose(p):
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show what TensorFlow, the converters and the interpreters log",
    )


def _export_parser():
    p = _Parser(
        prog=PROG,
        description="Export a saved Keras (QAT) model to a verified, "
        "codebook-exact TFLite file. Use `tflite-export verify FILE` to check a file. "
        "Exit status: 0 written and verified, 1 verification failed, 2 bad input or "
        "cannot export.",
    )
    p.add_argument("model", help=".keras or .h5 file, or SavedModel directory")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--format", default="int8", choices=FORMATS, help="default: int8")
    p.add_argument(
        "--target",
        default="tflm",
        choices=TARGETS,
        help="full_int8: the interpreter the file is verified on (default: tflm; "
        "litert for NPUs and phones when TFLM cannot run the model)",
    )
    p.add_argument(
        "--representative-data",
        metavar="FILE.npy",
        help="sample inputs (N, ...) for full_int8 calibration and the output check",
    )
    p.add_argument("--c-array", metavar="FILE.cc", help="also write a C array (and .h) for TFLM")
    p.add_argument(
        "--tflm-project",
        metavar="DIR",
        help="full_int8, tflm_packed: also write a TFLM project there (C array, op resolver, "
        "arena and tensor settings, a main.cc checked against TFLM)",
    )
    p.add_argument("--json", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument(
        "--allow-inexact",
        action="store_true",
        help="write codebooks with no exact integer lattice anyway",
    )
    p.add_argument(
        "--flash",
        metavar="SIZE",
        help="flash budget for the file, e.g. 64KiB (K/KiB = 1024, kB = 1000); a larger file "
        "is refused",
    )
    p.add_argument(
        "--ram",
        metavar="SIZE",
        help="RAM budget for TFLM's arena, e.g. 32KiB (full_int8, tflm_packed); tflm_packed "
        "packs only the weights whose decoded size fits",
    )
    p.add_argument(
        "--align-biases",
        metavar="MODEL.keras",
        help="full_int8, tflm_packed, a model trained with activations='int8': move its "
        "biases onto the file's int32 grid and save the moved model there (.keras or .h5; "
        "the model that computes the file's integers)",
    )
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="turn Keras safe mode off (trust code, e.g. Lambda layers, in the file)",
    )
    _add_verbose(p)
    return p


def _verify_parser():
    p = _Parser(
        prog=f"{PROG} verify",
        description="Read a .tflite file back with LiteRT and "
        "check every weight tensor against a codebook, per output channel. tflm_packed "
        "files are decoded from their bytes and run on TFLM instead. Exit status: 0 "
        "everything checked out, 1 a check failed, 2 bad input or an unreadable file.",
    )
    p.add_argument("file", help="the .tflite file")
    p.add_argument("--codebook", required=True, help="comma-separated values, e.g. 1,-1,0.5,-0.5")
    p.add_argument("--model", help="the Keras model to compare outputs with")
    p.add_argument("--representative-data", metavar="FILE.npy", help="inputs for the comparison")
    p.add_argument("--json", metavar="FILE.json", help="also write the check as JSON")
    _add_verbose(p)
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _check_npy(path) -> None:
    if path is not None and not os.path.isfile(path):
        raise ExportError(f"Representative data file not found. Received: {path!r}")


def _load_npy(path):
    if path is None:
        return None
    _check_npy(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExportError(f"Cannot read {path!r} as a .npy array: {e}") from e


def _main_export(argv, verbose: bool) -> int:
    args = _export_parser().parse_args(argv)
    try:
        # Everything that can be checked without TensorFlow, first.
        files.check_model_path(args.model)
        files.check_output_path(args.output, "--output")
        if args.json:
            files.check_output_path(args.json, "--json")
        if args.c_array:
            files.check_output_path(args.c_array, "--c-array")
        if args.tflm_project:
            project.check_request(args.format, args.target, args.tflm_project, cli=True)
        _check_npy(args.representative_data)
        aligned = _check_aligned_path(args.align_biases, args.model)
        budget.Budgets.of(args.format, args.flash, args.ram, None)
        require_extras()
        from tflite_export import convert, pipeline  # noqa: PLC0415 - TensorFlow loads after the checks

        model = args.model
        if aligned is not None:
            # The biases move in the loaded model, which is then saved: its saving is
            # tried first, so that a model that cannot be saved writes no file at all.
            model = convert.load_model(args.model, safe_mode=not args.unsafe)
            _save_model(model, aligned, keep=False)
        report = pipeline.export(
            model,
            args.output,
            format=args.format,
            representative_data=_load_npy(args.representative_data),
            allow_inexact=args.allow_inexact,
            c_array=args.c_array,
            safe_mode=not args.unsafe,
            target=args.target,
            verbose=verbose,
            progress=True,
            flash=args.flash,
            ram=args.ram,
            tflm_project=args.tflm_project,
            align_biases=aligned is not None,
        )
        if aligned is not None:
            _save_model(model, aligned, keep=True)
        if args.json:
            report.to_json(args.json)
    except VerificationError as e:
        print(str(e), file=sys.stderr)
        return 1
    except MissingDataError as e:
        return _fail(
            f"--format {e.format} needs --representative-data FILE.npy: sample inputs "
            f"(N, ...) to calibrate activation ranges on{e.reason}. Save a few hundred "
            "training inputs with numpy.save and pass that file."
        )
    except ExportError as e:
        if e.log.strip():  # what the libraries printed before they failed
            print(e.log.rstrip(), file=sys.stderr)
        return _fail(e.message)
    print(report)
    return 0


def _check_aligned_path(path, model_path):
    """The path `--align-biases` saves the moved model to (None without it)."""
    if path is None:
        return None
    p = files.check_output_path(path, "--align-biases")
    if p.suffix not in (".keras", ".h5"):
        raise ExportError(
            f"--align-biases saves the moved model: give a .keras or .h5 path. "
            f"Received: --align-biases {path!r}"
        )
    if p.exists() and os.path.samefile(p, model_path):
        raise ExportError(
            f"--align-biases would overwrite the model the file is exported from; give "
            f"another path. Received: --align-biases {path!r}"
        )
    return p


def _save_model(model, path, keep: bool) -> None:
    """Saves `model` to `--align-biases`' `path` through a temporary file beside
    it (replaced in one step, or removed when `keep` is False: a trial save)."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        model.save(str(tmp))
        if keep:
            os.replace(tmp, path)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"Cannot save the model to --align-biases {str(path)!r}: {msg}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _codebook_values(text: str) -> list[float]:
    """The numbers of `--codebook`, checked without TensorFlow."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ExportError(
            f"--codebook must be comma-separated numbers ({e}). Received: --codebook {text!r}"
        ) from e
    if len(set(values)) < 2:
        raise ExportError(
            f"--codebook must hold at least 2 distinct values. Received: --codebook {text!r}"
        )
    return values


def _main_verify(argv) -> int:
    args = _verify_parser().parse_args(argv)
    try:
        values = _codebook_values(args.codebook)
        if not os.path.isfile(args.file):
            raise ExportError(f"File not found. Received: {args.file!r}")
        if args.model:
            files.check_model_path(args.model)
        if args.json:
            files.check_output_path(args.json, "--json")
        _check_npy(args.representative_data)
        require_extras()
        from tflite_export import verify  # noqa: PLC0415 - TensorFlow loads after the checks

        check = verify.verify_file(
            args.file,
            values,
            model=args.model,
            representative_data=_load_npy(args.representative_data),
        )
        if args.json:
            check.to_json(args.json)
    except ExportError as e:
        return _fail(str(e))
    print(check)
    return 0 if check.ok else 1


def _verbose_flag(argv) -> tuple[list, bool]:
    rest = [a for a in argv if a not in ("-v", "--verbose")]
    return rest, len(rest) != len(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, verbose = _verbose_flag(argv)
    with library_logs(verbose):
        if argv and argv[0] == "verify":
            # `--codebook -1,0,1`: a value starting with "-" would read as an option.
            rest = argv[1:]
            for i, a in enumerate(rest[:-1]):
                if a == "--codebook" and rest[i + 1][:1] == "-":
                    rest[i : i + 2] = [f"--codebook={rest[i + 1]}"]
                    break
            return _main_verify(rest)
        return _main_export(argv, verbose)


if __name__ == "__main__":
    sys.exit(main())
