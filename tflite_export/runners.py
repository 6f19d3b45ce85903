"""Running a `.tflite` file: LiteRT and the TFLM interpreter, one sample at a time."""

from __future__ import annotations

import numpy as np


def interpreter(model_bytes: bytes):
    """A LiteRT interpreter for the file, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

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
        from tflite_export import isolation  # noqa: PLC0415

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


def run_tflm(model_bytes: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs the file with the TensorFlow Lite for Microcontrollers interpreter,
    in a child process (`tflite_export.isolation`): TFLM aborts the process
    on some models.

    Args:
        model_bytes: The `.tflite` file (TFLM runs int8 files).
        inputs: As for `run_litert`.

    Returns:
        One array `(N, ...)` per model output, as the file stores it (raw int8).

    Raises:
        ExportError: When the interpreter crashed, failed or hung (the signal or
            its message is named).
    """
    from tflite_export import isolation  # noqa: PLC0415

    return isolation.run_in_child("tflm", model_bytes, inputs)


def run_tflm_here(model_bytes: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """`run_tflm` in this process (the child side of it)."""
    from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415

    micro = runtime.Interpreter.from_bytes(model_bytes)
    lite = interpreter(model_bytes)
    ins, n_out = lite.get_input_details(), len(lite.get_output_details())
    results = [[] for _ in range(n_out)]
    for i in range(len(inputs[0])):
        for k, (d, x) in enumerate(zip(ins, inputs)):
            micro.set_input(quantize_input(d, x[i : i + 1]), k)
        micro.invoke()
        for k in range(n_out):
            results[k].append(np.asarray(micro.get_output(k)))
    return [np.concatenate(r, axis=0) for r in results]
