"""Running a `.tflite` file: LiteRT and the TFLM interpreter, one sample at a time.

`run_litert(..., isolated=True)` and `run_tflm` run in the child process of
`tflite_export.isolation`; the rest runs here (and is what the child runs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from tflite_micro.python.tflite_micro import runtime

from tflite_export import isolation, micro, reading
from tflite_export.errors import ExportError, InterpreterError


def require_litert(model_bytes: bytes) -> None:
    """Raises `ExportError` for a `tflm_packed` file, which only TFLM runs."""
    if reading.is_packed(model_bytes):
        raise ExportError(
            "This is a tflm_packed file (weights as indices decoded by TFLM's DECODE "
            "operator): only TensorFlow Lite for Microcontrollers runs it, LiteRT cannot. "
            "Use the TFLM interpreter (tflite_micro's runtime.Interpreter), or export "
            "full_int8 for LiteRT."
        )


def interpreter(model_bytes: bytes):
    """A LiteRT interpreter for the file, tensors allocated.

    Raises:
        ExportError: For a `tflm_packed` file, which only TFLM runs.
    """
    require_litert(model_bytes)
    it = Interpreter(model_content=model_bytes, experimental_preserve_all_tensors=False)
    it.allocate_tensors()
    return it


def quantize_input(detail, x):
    """`x` as the input tensor `detail` takes it (int8/uint8: quantized with its parameters)."""
    dtype = detail["dtype"]
    if dtype == np.int8 or dtype == np.uint8:
        scale, zp = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def dequantize_output(detail, y):
    """An output tensor as float64 (int8/uint8: dequantized with its parameters)."""
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zp = detail["quantization"]
        return (y.astype(np.float64) - zp) * scale
    return y.astype(np.float64)


def output_scales(model_bytes: bytes) -> list[float | None]:
    """Per output of the file, the value of one int8 step (its quantization
    scale), or `None` for a float output."""
    out = []
    for d in interpreter(model_bytes).get_output_details():
        scale = d["quantization"][0]
        out.append(float(scale) if d["dtype"] in (np.int8, np.uint8) and scale else None)
    return out


def run_litert(
    model_bytes: bytes, inputs: list[np.ndarray] | None, raw: bool = False, isolated: bool = False
) -> list[np.ndarray]:
    """Runs the file with LiteRT on a batch, one sample at a time.

    Args:
        model_bytes: The `.tflite` file.
        inputs: One float array `(N, ...)` per model input; int8 inputs are
            quantized with the file's own parameters. `None` (only with
            `isolated`): 8 random inputs of the file's shapes.
        raw: Return the outputs as the file stores them (int8 stays int8)
            instead of as float64. Defaults to `False`.
        isolated: Run in a child process (`tflite_export.isolation`): for files
            from elsewhere, which can crash the interpreter. Defaults to `False`.

    Returns:
        One array `(N, ...)` per model output.

    Raises:
        ExportError: With `isolated`, when the interpreter crashed, failed or hung.
    """
    if isolated:
        return isolation.run_in_child("litert", model_bytes, inputs, raw=raw)
    it = interpreter(model_bytes)
    ins, outs = it.get_input_details(), it.get_output_details()
    results = [[] for _ in outs]
    for i in range(len(inputs[0])):
        for d, x in zip(ins, inputs):
            it.set_tensor(d["index"], quantize_input(d, x[i : i + 1]))
        it.invoke()
        for k, d in enumerate(outs):
            y = it.get_tensor(d["index"])
            results[k].append(y.copy() if raw else dequantize_output(d, y))
    return [np.concatenate(r, axis=0) for r in results]


def run_tflm(
    model_bytes: bytes, inputs: list[np.ndarray] | None, dequantize: bool = False
) -> list[np.ndarray]:
    """Runs the file with the TensorFlow Lite for Microcontrollers interpreter,
    in a child process (`tflite_export.isolation`): TFLM aborts the process
    on some models.

    Args:
        model_bytes: The `.tflite` file (TFLM runs int8 and tflm_packed files).
        inputs: As for `run_litert`; quantized with TFLM's view of the inputs.
            `None`: 8 random inputs of the file's shapes (`random_tflm_inputs`).
        dequantize: Return float64 outputs (dequantized with the file's
            parameters) instead of the raw int8 ones. Defaults to `False`.

    Returns:
        One array `(N, ...)` per model output.

    Raises:
        ExportError: When TFLM refuses the file (`micro.tflm_abort_reasons`),
            or the interpreter crashed, failed or hung (the signal or its
            message is named).
    """
    return isolation.run_in_child("tflm", model_bytes, inputs, raw=not dequantize)


def run_tflm_here(
    model_bytes: bytes, inputs: list[np.ndarray] | None, dequantize: bool = False
) -> list[np.ndarray]:
    """`run_tflm` in this process (the child side of it).

    Raises:
        InterpreterError: When TFLM refuses the file (see `tflm_interpreter`).
    """
    it = tflm_interpreter(model_bytes)
    if inputs is None:
        inputs = random_tflm_inputs(model_bytes, interp=it)
    xs = int8_inputs(it, inputs)
    n_out = len(read_tflm_model(model_bytes).subgraphs[0].outputs)
    results = [[] for _ in range(n_out)]
    for i in range(len(xs[0])):
        for k, x in enumerate(xs):
            it.set_input(x[i : i + 1], k)
        with tflm_messages("run the file"):
            it.invoke()
        for k in range(n_out):
            results[k].append(np.array(it.get_output(k)))
    out = [np.concatenate(r, axis=0) for r in results]
    if dequantize:
        for k in range(n_out):
            q = it.get_output_details(k)["quantization_parameters"]
            if len(q["scales"]):
                out[k] = (out[k].astype(np.float64) - q["zero_points"][0]) * q["scales"][0]
    return out


def read_tflm_model(model_bytes: bytes):
    """The flatbuffer as objects, read with TFLM's schema (no TensorFlow import: the
    child process runs this).

    Raises:
        TfliteFileError: For bytes that are not a `.tflite` file.
    """
    return reading.read_model(model_bytes)


def tflm_interpreter(model_bytes: bytes, preserve_all_tensors: bool = False):
    """A TFLM interpreter of the file, in this process.

    Its arena holds the decoded weights of a tflm_packed file, and its
    resolver has TFLM's `DECODE`. Known causes of an abort
    (`micro.tflm_abort_reasons`) are refused before TFLM sees the file.

    Raises:
        InterpreterError: When TFLM refuses the file (a `RuntimeError` too).
    """
    model = read_tflm_model(model_bytes)
    reasons = micro.tflm_abort_reasons(model)
    if reasons:
        raise InterpreterError(f"TFLM cannot load the file: {'; '.join(reasons)}.")
    config = (
        runtime.InterpreterConfig.kPreserveAllTensors
        if preserve_all_tensors
        else runtime.InterpreterConfig.kAllocationRecording
    )
    # The runtime's default arena (10x the file) leaves out the decoded weights.
    sg = model.subgraphs[0]
    decoded = sum(
        int(np.prod(sg.tensors[int(o)].shape))
        for op in sg.operators or []
        if op.outputs is not None
        for o in op.outputs
        if sg.tensors[int(o)].buffer == 0
    )
    with tflm_messages("load the file"):
        return runtime.Interpreter.from_bytes(
            model_bytes, arena_size=10 * len(model_bytes) + 4 * decoded, intrepreter_config=config
        )


@contextlib.contextmanager
def tflm_messages(what: str):
    """Turns TFLM's bare `RuntimeError` into an `InterpreterError` carrying
    what TFLM printed (to the C standard error) about the operator it could
    not prepare, find or run: "Node STRIDED_SLICE (number 0) failed to
    prepare", "Didn't find op for builtin opcode ...", and the kernel's reason."""
    fd = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        except RuntimeError as e:
            os.dup2(fd, 2)
            f.seek(0)
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines()]
            said = [x for x in lines if x and not x.startswith(("Arena", "["))][-3:]
            detail = f": {'; '.join(said)}" if said else ""
            raise InterpreterError(f"TFLM could not {what} ({e}){detail}") from e
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def tflm_outputs(it, inputs: list[np.ndarray]) -> np.ndarray:
    """Raw outputs (first output tensor) of `it` for int8 samples, one at a time."""
    outs = []
    for i in range(len(inputs[0])):
        for k, x in enumerate(inputs):
            it.set_input(np.asarray(x[i : i + 1]), k)
        it.invoke()
        outs.append(np.array(it.get_output(0)))
    return np.concatenate(outs, axis=0)


def tflm_arena_bytes(it) -> int:
    """Arena bytes TFLM allocated for `it` (run `invoke` first).

    TFLM's recording allocator prints its totals to the C standard error;
    they are read from there. An interpreter made with exactly that many
    bytes loads and runs; one byte less does not.
    """
    fd = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            it.print_allocations()
        finally:
            os.dup2(fd, 2)
            os.close(fd)
        f.seek(0)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if "Arena allocation total" in line:
            return int(line.split("total", 1)[1].split()[0])
    raise InterpreterError(f"TFLM printed no arena total. Received: {text[:200]!r}")


def int8_inputs(it, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Float samples quantized with the file's own input parameters."""
    out = []
    for k, x in enumerate(inputs):
        d = it.get_input_details(k)
        q = d["quantization_parameters"]
        if (
            np.dtype(d["dtype"]).kind in "iu"
            and len(q["scales"])
            and np.asarray(x).dtype.kind == "f"
        ):
            info = np.iinfo(d["dtype"])
            x = np.round(np.asarray(x) / q["scales"][0] + q["zero_points"][0])
            x = np.clip(x, info.min, info.max)
        out.append(np.asarray(x).astype(d["dtype"]))
    return out


def random_tflm_inputs(
    model_bytes: bytes, n: int = 8, seed: int = 0, interp=None
) -> list[np.ndarray]:
    """Random int8 (or float) inputs of the shapes the file takes, for TFLM.

    Args:
        model_bytes: The `.tflite` file.
        n: Samples. Defaults to 8.
        seed: Random seed. Defaults to 0.
        interp: A TFLM interpreter of the file (`tflm_interpreter`); made here
            when `None` (in this process). Defaults to `None`.
    """
    rng = np.random.default_rng(seed)
    it = interp if interp is not None else tflm_interpreter(model_bytes)
    out = []
    for k in range(len(read_tflm_model(model_bytes).subgraphs[0].inputs)):
        d = it.get_input_details(k)
        shape = (n, *[int(s) for s in d["shape"][1:]])
        dtype = np.dtype(d["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype))
        else:
            out.append(rng.normal(size=shape).astype(dtype))
    return out


def tflm_compare_here(
    packed_bytes: bytes, full_int8: bytes, inputs: list[np.ndarray], rounds: int = 7
) -> np.ndarray:
    """Both files on TFLM in this process (the child side of
    `packed.compare_on_tflm`): `[samples, max LSB difference, packed arena,
    full_int8 arena, packed latency, full_int8 latency]` (median seconds)."""
    ref_it, it = tflm_interpreter(full_int8), tflm_interpreter(packed_bytes)
    xs = int8_inputs(ref_it, inputs)
    want, got = tflm_outputs(ref_it, xs), tflm_outputs(it, xs)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    times = {"full": [], "packed": []}
    block = 3
    first = [np.asarray(x[:1]) for x in xs]
    for _ in range(rounds):
        for key, interp in (("full", ref_it), ("packed", it)):
            t0 = time.perf_counter()
            for _ in range(block):
                # TFLM may reuse the input's memory once the first operator has
                # read it: token ids left behind would index out of range.
                for k, x in enumerate(first):
                    interp.set_input(x, k)
                interp.invoke()
            times[key].append((time.perf_counter() - t0) / block)
    return np.array(
        [
            len(xs[0]),
            diff.max(initial=0),
            tflm_arena_bytes(it),
            tflm_arena_bytes(ref_it),
            np.median(times["packed"]),
            np.median(times["full"]),
        ],
        np.float64,
    )
