"""`tflite-export`: saved Keras model -> verified, codebook-exact `.tflite` file.

    tflite-export MODEL -o OUT --format {float,int8,int4,full_int8,tflm_packed}
        [--representative-data FILE.npy] [--c-array FILE.cc] [--allow-inexact] [--unsafe]
        [--flash 64KiB] [--ram 32KiB] [--verbose]
    tflite-export verify FILE.tflite --codebook 1,-1,0.5,-0.5 [--model MODEL]
        [--representative-data FILE.npy] [--verbose]

TensorFlow's, the converters' and the interpreters' own log lines are shown
only with `--verbose`.

Exit status: 0 when everything checked out, 1 when verification failed,
2 for bad input (nothing is written then).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

from tflite_export import budget, inputs, micro, runners
from tflite_export.errors import ExportError
from tflite_export.formats import FORMATS
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
        "codebook-exact TFLite file. Use `tflite-export verify FILE` to check a file.",
    )
    p.add_argument("model", help=".keras or .h5 file, or SavedModel directory")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--format", default="int8", choices=FORMATS, help="default: int8")
    p.add_argument(
        "--representative-data",
        metavar="FILE.npy",
        help="sample inputs (N, ...) for full_int8 calibration and the output check",
    )
    p.add_argument("--c-array", metavar="FILE.cc", help="also write a C array (and .h) for TFLM")
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
        "files are decoded from their bytes and run on TFLM instead.",
    )
    p.add_argument("file", help="the .tflite file")
    p.add_argument("--codebook", required=True, help="comma-separated values, e.g. 1,-1,0.5,-0.5")
    p.add_argument("--model", help="the Keras model to compare outputs with")
    p.add_argument("--representative-data", metavar="FILE.npy", help="inputs for the comparison")
    _add_verbose(p)
    return p


def _one_line(error: BaseException) -> str:
    """`Type: first line of the message` (interpreters raise many-line errors)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _load_npy(path):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ExportError(f"Representative data file not found. Received: {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"Cannot read {path!r} as a .npy array: {e}") from e


def _main_export(argv) -> int:
    args = _export_parser().parse_args(argv)
    import tflite_export  # noqa: PLC0415

    try:
        budget.Budgets.of(args.format, args.flash, args.ram, None)  # before the model loads
        rep = _load_npy(args.representative_data)
        report = tflite_export.export(
            args.model,
            args.output,
            format=args.format,
            representative_data=rep,
            allow_inexact=args.allow_inexact,
            c_array=args.c_array,
            safe_mode=not args.unsafe,
            flash=args.flash,
            ram=args.ram,
        )
    except ExportError as e:
        text = str(e)
        if text.startswith("Verification failed"):
            print(text, file=sys.stderr)
            return 1
        return _fail(text.splitlines()[0] if "\n" not in text else text)
    print(report)
    return 0 if report.ok else 1


def _parse_codebook(text):
    from tfmot_discrete.codebook import Codebook  # noqa: PLC0415

    try:
        return Codebook([float(v) for v in text.split(",") if v.strip()])
    except ValueError as e:
        raise ExportError(
            f"--codebook must be comma-separated numbers, at least 2 distinct ({e}). "
            f"Received: --codebook {text!r}"
        ) from e


def _weight_lines(path, data, codebook) -> tuple[list[str], bool]:
    """The file's weight tensors against the codebook: report lines, all exact."""
    from tflite_export import verify  # noqa: PLC0415
    from tfmot_discrete import text  # noqa: PLC0415

    try:
        checks = verify.check_codebook_file(data, codebook)
    except Exception as e:  # noqa: BLE001 - whatever a malformed file raises
        raise ExportError(f"{path!r} is not a readable .tflite file ({_one_line(e)})") from None
    lines = [
        f"{path}: {len(data):,} bytes, codebook {text.format_values(codebook.values, codebook.size)}"
    ]
    for c in checks:
        status = "exact" if c.exact else f"NOT in codebook (max deviation {c.max_error:.3g})"
        lines.append(f"  {c.name}: {c.storage}, {c.count:,} weights, {status}")
    if not checks:
        lines.append("  no weight tensors found")
    return lines, bool(checks) and all(c.exact for c in checks)


def _run_untrusted(path, data, xs) -> list[np.ndarray]:
    """LiteRT's outputs for `xs` (None: 8 random inputs), run in a child process."""
    try:
        return runners.run_litert(data, xs, isolated=True)
    except ExportError as e:
        raise ExportError(f"{path!r} is not a readable .tflite file: {e}") from None


def _random_run_line(outputs) -> tuple[str, bool]:
    """No model to compare with: the outputs on random inputs must be finite."""
    finite = all(np.all(np.isfinite(o)) for o in outputs)
    return (
        "  ran on 8 random inputs with LiteRT: "
        + ("outputs finite" if finite else "NON-FINITE outputs")
    ), finite


def _model_line(path, data, model_path, rep, on_tflm: bool = False) -> str:
    """The file's outputs (LiteRT's, or TFLM's for a packed file) against the
    (stripped) Keras model's."""
    from tflite_export import convert  # noqa: PLC0415
    from tfmot_discrete.quantize import is_quantized, strip_quantization  # noqa: PLC0415

    model = convert.load_model(model_path)
    plain = strip_quantization(model) if is_quantized(model) else model
    xs = inputs.representative(plain, rep) if rep is not None else inputs.random_inputs(plain)
    ref = np.asarray(plain.predict(xs[0] if len(xs) == 1 else xs, verbose=0))
    if on_tflm:
        got = _run_untrusted_tflm(path, data, xs, dequantize=True)[0]
    else:
        got = _run_untrusted(path, data, xs)[0]
    if got.size != ref.size:
        raise ExportError(
            f"The file's output has {got.size} values for {len(ref)} inputs; the model "
            f"{model_path!r} gives {ref.size}: they are not the same model."
        )
    got = got.reshape(ref.shape)
    diff = float(np.abs(got - ref).max())
    rng = float(ref.max() - ref.min()) or 1.0
    return (
        f"  {'TFLM outputs' if on_tflm else 'outputs'} vs {model_path}: max abs diff "
        f"{diff:.3g} ({diff / rng:.2e} of output range)"
    )


def _main_verify(argv) -> int:
    args = _verify_parser().parse_args(argv)
    try:
        codebook = _parse_codebook(args.codebook)
        path = pathlib.Path(args.file)
        if not path.is_file():
            raise ExportError(f"File not found. Received: {args.file!r}")
        data = path.read_bytes()
        from tflite_export import packed  # noqa: PLC0415

        if packed.is_packed(data):  # LiteRT cannot run DECODE: TFLM, in the child
            return _verify_packed(args, data, codebook)
        # LiteRT first, in a child process: a file that crashes the interpreter
        # ends that process, not this one, and is reported like any bad file.
        probe = _run_untrusted(args.file, data, None)
        lines, ok = _weight_lines(args.file, data, codebook)
        rep = _load_npy(args.representative_data)
        if args.model:
            lines.append(_model_line(args.file, data, args.model, rep))
        else:
            line, finite = _random_run_line(probe)
            lines.append(line)
            ok = ok and finite
        lines.append("OK" if ok else "FAILED")
        print("\n".join(lines))
        return 0 if ok else 1
    except ExportError as e:
        return _fail(str(e))


def _verify_packed(args, data: bytes, codebook) -> int:
    """`verify` of a tflm_packed file: indices and tables decoded here, then TFLM."""
    from tflite_export import packed  # noqa: PLC0415
    from tfmot_discrete import text  # noqa: PLC0415

    try:
        checks = packed.check_codebook_file(data, codebook)
    except Exception as e:  # noqa: BLE001 - whatever a malformed file raises
        raise ExportError(f"{args.file!r} is a damaged tflm_packed file: {_one_line(e)}") from None
    shown = text.format_values(codebook.values, codebook.size)
    lines = [f"{args.file}: {len(data):,} bytes, tflm_packed, codebook {shown}"]
    for c in checks:
        status = "exact" if c.exact else f"NOT in codebook (max deviation {c.max_error:.3g})"
        table = ", ".join(str(int(v)) for v in c.table)
        layout = "one table" if c.tables == 1 else f"{c.tables} tables"
        lines.append(
            f"  {c.name}: {c.storage} ({layout}, int8 values {{{table}}}), "
            f"{c.count:,} weights, {status}"
        )
    ok = bool(checks) and all(c.exact for c in checks)
    try:
        reasons = micro.tflm_abort_reasons(runners.read_tflm_model(data))
    except Exception as e:  # noqa: BLE001 - whatever a malformed file raises
        raise ExportError(f"{args.file!r} is a damaged tflm_packed file: {_one_line(e)}") from None
    if reasons:  # known to abort TFLM: said, not tried
        lines.append(f"  TFLM cannot run it: {reasons[0]}")
        ok = False
    elif args.model:
        lines.append(
            _model_line(
                args.file, data, args.model, _load_npy(args.representative_data), on_tflm=True
            )
        )
    else:
        _run_untrusted_tflm(args.file, data, None)
        lines.append("  ran on 8 random inputs with TFLM")
    lines.append("OK" if ok else "FAILED")
    print("\n".join(lines))
    return 0 if ok else 1


def _run_untrusted_tflm(path, data, xs, dequantize=False) -> list[np.ndarray]:
    """TFLM's outputs for `xs` (None: 8 random inputs); TFLM always runs in
    the child process, so a crash is reported like any bad file."""
    try:
        return runners.run_tflm(data, xs, dequantize=dequantize)
    except ExportError as e:
        raise ExportError(f"{path!r} is not a readable .tflite file: {e}") from None


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
        return _main_export(argv)


if __name__ == "__main__":
    sys.exit(main())
