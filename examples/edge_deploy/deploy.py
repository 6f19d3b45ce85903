"""Step 2 of 2: saved QAT model -> full_int8 and tflm_packed .tflite + TFLM projects -> TFLM run.

Loads `qat.keras` (inside `td.quantize_scope()`), writes a verified,
codebook-exact `full_int8` file and the TFLM project generated from it
(`board/`: the C array, an op resolver of exactly the file's operators, the
arena and input settings, a `main.cc` checked against TFLM), then runs the
file on the TensorFlow Lite for Microcontrollers interpreter (the
`tflite-micro` package: the same kernels a microcontroller runs) over the
whole test set, and finds the smallest tensor arena it runs in. Next to it,
`model_packed.tflite` (and its project, `board_packed/`) stores the ternary
weights as 2-bit indices (`format="tflm_packed"`, TFLM only); both files'
sizes, arenas and TFLM latencies are printed.

    python examples/edge_deploy/deploy.py [--model out/edge/qat.keras]
        [--data out/edge/data.npz] [--out out/edge]
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np

import tflite_export

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/, for _cli
import _cli

with _cli.quiet_imports():  # TensorFlow loads here (on first use of td.keras)
    import tfmot_discrete as td
    from tflite_export import runners

    keras = td.keras

# TFLM aborts the process on some files, and a too-small arena can crash it:
# every TFLM interpreter of this script runs in a child process.
_ARENA_RECORD = """
import sys, numpy as np
from tflite_export import runners
it = runners.tflm_interpreter(open(sys.argv[1], "rb").read())
d = it.get_input_details(0)
it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
it.invoke()
print(runners.tflm_arena_bytes(it))
"""
_ARENA_TRIAL = """
import sys, numpy as np
from tflite_micro.python.tflite_micro import runtime
it = runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
d = it.get_input_details(0)
it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
it.invoke()
"""


def _child(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def runs_with_arena(path, size: int) -> bool:
    return _child(_ARENA_TRIAL, path, size).returncode == 0


def smallest_arena(path) -> int:
    """The smallest `arena_size` the TFLM interpreter runs the model with.

    TFLM's recording allocator reports the bytes it allocated
    (`tflite_export.runners.tflm_arena_bytes`); the model is then run once
    with exactly that arena and once with 16 bytes less, each in a fresh
    process, to confirm it is the smallest.
    """
    proc = _child(_ARENA_RECORD, path)
    if proc.returncode != 0:
        raise RuntimeError(f"TFLM could not run {path}: {proc.stderr.strip()[-500:]}")
    arena = int(proc.stdout.split()[-1])
    if not runs_with_arena(path, arena) or runs_with_arena(path, arena - 16):
        raise RuntimeError(f"TFLM's recorded arena of {arena} bytes is not the smallest")
    return arena


def tflm_accuracy(data: bytes, x, y) -> tuple[float, float, int]:
    """Top-1 accuracy of the file on TFLM (in a child process), with int8 inputs
    quantized as the file says.

    Returns (accuracy, input scale, input zero point).
    """
    fb = runners.read_tflm_model(data)
    sg = fb.subgraphs[0]
    q = sg.tensors[sg.inputs[0]].quantization
    scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
    logits = runners.run_tflm(data, [np.asarray(x, np.float32)])[0]
    hits = int(np.sum(np.argmax(logits.reshape(len(y), -1), axis=1) == np.asarray(y)))
    return hits / len(y), scale, zero


def export_and_score(qat, path: pathlib.Path, fmt: str, data, board: pathlib.Path):
    """Writes a verified `fmt` file and its TFLM project (`board`), prints the
    report, and scores the file on TFLM over the test set.

    Returns:
        `(report, TFLM accuracy, input scale, input zero point)`, or None when
        the file failed verification.
    """
    report = tflite_export.export(
        qat,
        path,
        format=fmt,
        representative_data=data["x_calibration"],
        tflm_project=board,
    )
    print(report)
    if not (report.ok and report.exact):
        return None
    return report, *tflm_accuracy(path.read_bytes(), data["x_test"], data["y_test"])


def _run(args) -> int:
    out = pathlib.Path(args.out)
    data = np.load(args.data)

    with td.quantize_scope():  # our quantizers and TF-MOT's wrappers
        qat = keras.models.load_model(args.model)
    path = out / "model.tflite"
    scored = export_and_score(qat, path, "full_int8", data, out / "board")
    if scored is None:
        return 1
    _, acc, scale, zero = scored
    model_bytes = path.read_bytes()
    n = len(data["y_test"])
    print(f"TFLM test accuracy: {acc:.2%} on {n} test images")
    arena = smallest_arena(path)
    print(
        f"TFLM arena: {arena:,} bytes (recorded by TFLM's allocator: the model runs with "
        "exactly this arena_size, not with 16 bytes less)"
    )
    settings = (out / "board" / "model_settings.h").read_text()
    asked = int(re.search(r"kTensorArenaSize = (\d+);", settings).group(1))
    print(
        f"board/model_settings.h: kTensorArenaSize = {asked:,} bytes (the arena export "
        "measured, plus a margin for the target's kernels)"
    )
    print(
        f"input: int8, shape {list(qat.input_shape[1:])}, "
        f"q = round(x / {scale:.6g}) + ({zero}) (scale, zero point)"
    )

    # The same model with its ternary weights as 2-bit indices (TFLM only).
    packed_path = out / "model_packed.tflite"
    scored = export_and_score(qat, packed_path, "tflm_packed", data, out / "board_packed")
    if scored is None:
        return 1
    packed, packed_acc, _, _ = scored
    t = packed.tflm
    print(f"TFLM test accuracy (packed): {packed_acc:.2%} on {n} test images")
    print(
        f"size: full_int8 {len(model_bytes):,} bytes, tflm_packed {packed.size_bytes:,} bytes "
        f"(float file {packed.float_size_bytes:,})"
    )
    print(
        f"TFLM arena (recorded): full_int8 {t.full_int8_arena_bytes:,} bytes, tflm_packed "
        f"{t.arena_bytes:,} bytes (decoded weights live in the arena while their layer runs)"
    )
    print(
        f"TFLM latency per inference (this host): full_int8 {1e6 * t.full_int8_latency_s:.0f} "
        f"us, tflm_packed {1e6 * t.latency_s:.0f} us"
    )
    return 0


def main(argv=None) -> int:
    parser = _cli.parser(__doc__, out="out/edge")
    parser.add_argument("--model", default="out/edge/qat.keras", help="the saved QAT model")
    parser.add_argument("--data", default="out/edge/data.npz", help="from train.py")
    return _cli.run(parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
