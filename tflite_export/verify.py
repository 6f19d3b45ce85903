"""Read a `.tflite` file back with LiteRT, check its weights against a
codebook and its outputs against the Keras model."""

from __future__ import annotations

import dataclasses

import numpy as np

from tflite_export import exact
from tfmot_discrete.codebook import Codebook


def interpreter(model_bytes: bytes):
    """A LiteRT interpreter of the file, tensors allocated.

    Raises:
        ExportError: For a `tflm_packed` file, which only TFLM runs.
    """
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    from tflite_export import packed  # noqa: PLC0415

    if packed.is_packed(model_bytes):
        from tflite_export.convert import ExportError  # noqa: PLC0415

        raise ExportError(
            "This is a tflm_packed file (weights as indices decoded by TFLM's DECODE "
            "operator): only TensorFlow Lite for Microcontrollers runs it, LiteRT cannot. "
            "Use the TFLM interpreter (tflite_micro's runtime.Interpreter), or export "
            "full_int8 for LiteRT."
        )

    it = Interpreter(model_content=model_bytes, experimental_preserve_all_tensors=False)
    it.allocate_tensors()
    return it


def litert_weights(it, indices) -> dict[int, np.ndarray]:
    """`{tensor index: dequantized float64 value}` of the given constant tensors,
    as LiteRT reads them (int4 comes back unpacked)."""
    out = {}
    wanted = set(indices)
    for d in it.get_tensor_details():
        if d["index"] not in wanted:
            continue
        try:
            raw = it.get_tensor(d["index"])
        except ValueError:
            continue
        if raw is None or raw.size == 0:
            continue
        qp = d["quantization_parameters"]
        scales = np.asarray(qp["scales"], np.float64)
        if scales.size == 0 or raw.dtype.kind == "f":
            out[d["index"]] = raw.astype(np.float64)
            continue
        zps = np.asarray(qp["zero_points"], np.float64)
        if scales.size == 1:
            out[d["index"]] = (raw - zps[0]) * scales[0]
        else:
            shape = [1] * raw.ndim
            shape[qp["quantized_dimension"]] = -1
            out[d["index"]] = (raw - zps.reshape(shape)) * scales.reshape(shape)
    return out


def channel_fit(values: np.ndarray, codebook: Codebook, dim: int | None, rtol: float = 1e-5):
    """Per channel: the unit `u` with `values / u` in the codebook, or None.

    Returns (units, max relative deviation from the nearest codebook point).
    """
    if dim is None:
        rows = values.reshape(1, -1)
    else:
        rows = np.moveaxis(values, dim, 0).reshape(values.shape[dim], -1)
    cb = codebook.values
    nonzero = cb[cb != 0]
    units, worst = [], 0.0
    for row in rows:
        peak = row[np.argmax(np.abs(row))] if row.size else 0.0
        if peak == 0:
            units.append(1.0 if 0.0 in cb else None)
            continue
        best = None
        for c in nonzero:
            u = peak / c
            r = row / u
            dev = np.abs(r - codebook.project_numpy(r)).max() / max(1.0, codebook.max_abs)
            if best is None or dev < best[1]:
                best = (u, dev)
        worst = max(worst, best[1])
        units.append(best[0] if best[1] <= rtol else None)
    return units, worst


@dataclasses.dataclass
class WeightCheck:
    """One weight tensor of the file, checked against its codebook."""

    name: str
    codebook: np.ndarray
    bits: int  # ceil(log2 K)
    storage: str  # int4 / int8 / float32
    count: int
    exact: bool
    max_error: float  # max |decoded - trained value|
    index_bits: int | None = None  # tflm_packed: bits of each stored index
    table: np.ndarray | None = None  # tflm_packed: int8 value table (first channel's)
    tables: int = 0  # tflm_packed: 1 (one table for the tensor) or one per channel

    @property
    def stored_bits(self) -> int:
        if self.index_bits is not None:
            return self.index_bits
        return {"int4": 4, "int8": 8, "float32": 32, "float16": 16}.get(self.storage, 32)


def check_codebook_file(model_bytes: bytes, codebook: Codebook) -> list[WeightCheck]:
    """Every weight tensor (FC, conv, depthwise, transpose conv, embedding) of
    the file must be `codebook x one factor per output channel`."""
    fb = exact.read(model_bytes)
    it = interpreter(model_bytes)
    found = exact.weight_tensors(fb)
    values = litert_weights(it, [t for _, t in found])
    sg = fb.subgraphs[0]
    out = []
    for op_i, t in found:
        code = fb.operatorCodes[sg.operators[op_i].opcodeIndex].builtinCode
        if code == 18:  # MUL constants are not weights of a quantizable layer
            continue
        tensor = sg.tensors[t]
        v = values.get(t)
        if v is None:
            v = exact.dequantize(fb, tensor)
        dim = _channel_dim(code, tensor)
        units, worst = channel_fit(v, codebook, dim)
        out.append(
            WeightCheck(
                name=tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
                codebook=codebook.values,
                bits=codebook.bits,
                storage=exact.tensor_type_name(tensor),
                count=int(v.size),
                exact=all(u is not None for u in units),
                max_error=float(worst),
            )
        )
    return out


def _channel_dim(code, tensor):
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) > 1:
        return int(q.quantizedDimension)
    return {4: 3, 113: 4}.get(code, 0)


def run_litert(model_bytes: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs the file on a batch (one sample at a time); float in, float out
    (int8 inputs and outputs are quantized and dequantized with the file's own
    parameters)."""
    it = interpreter(model_bytes)
    ins = it.get_input_details()
    outs = it.get_output_details()
    n = len(inputs[0])
    results = [[] for _ in outs]
    for i in range(n):
        for d, x in zip(ins, inputs):
            it.set_tensor(d["index"], quantize_input(d, x[i : i + 1]))
        it.invoke()
        for k, d in enumerate(outs):
            results[k].append(dequantize_output(d, it.get_tensor(d["index"])))
    return [np.concatenate(r, axis=0) for r in results]


def quantize_input(detail, x):
    dtype = detail["dtype"]
    if dtype == np.int8 or dtype == np.uint8:
        scale, zp = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def dequantize_output(detail, y):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zp = detail["quantization"]
        return (y.astype(np.float64) - zp) * scale
    return y.astype(np.float64)
