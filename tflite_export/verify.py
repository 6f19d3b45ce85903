"""Read a `.tflite` file back with LiteRT and check its weights against a
codebook (any file) or against the trained weights (an export)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tflite_export import exact, runners
from tflite_export.schema import (
    INTEGER_TYPES,
    OUTPUT_CHANNEL_DIM,
    BuiltinOperator,
    storage_name,
)
from tfmot_discrete.codebook import Codebook


def litert_weights(it, indices, dtype=np.float64) -> dict[int, np.ndarray]:
    """`{tensor index: dequantized value}` (as `dtype`) of the given constant
    tensors, as LiteRT reads them (int4 comes back unpacked)."""
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
            out[d["index"]] = raw.astype(dtype, copy=False)
            continue
        out[d["index"]] = exact.dequantize_values(
            raw, scales, qp["zero_points"], qp["quantized_dimension"], dtype
        )
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
    #: An 8-bit weight ("int8" in the mapping): exact means the stored integers
    #: and steps are those it trained with.
    trained_int8: bool = False
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
    it = runners.interpreter(model_bytes)
    found = exact.weight_tensors(fb)
    values = litert_weights(it, [t for _, t in found])
    sg = fb.subgraphs[0]
    out = []
    for op_i, t in found:
        code = fb.operatorCodes[sg.operators[op_i].opcodeIndex].builtinCode
        if code == BuiltinOperator.MUL:  # MUL constants are not weights of a quantizable layer
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
                storage=storage_name(tensor),
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
    return OUTPUT_CHANNEL_DIM.get(code, 0)


def check_weights(model_bytes: bytes, matches) -> list[WeightCheck]:
    """Reads the file back with LiteRT; each codebook weight vs its trained value.

    Args:
        model_bytes: The `.tflite` file.
        matches: `exact.TensorMatch`es: where each codebook weight is stored.

    Returns:
        One `WeightCheck` per match.
    """
    fb = exact.read(model_bytes)
    it = runners.interpreter(model_bytes)
    out = []
    for m in matches:
        # One tensor at a time, compared a chunk of channels at a time.
        tensor = fb.subgraphs[0].tensors[m.tensor]
        v = litert_weights(it, [m.tensor], np.float32).get(m.tensor)
        if v is None:
            v = exact.dequantize(fb, tensor)
        v = v.reshape(m.reference.shape)
        units = exact.channel_broadcast(np.where(m.units == 0, 1.0, m.units), v.ndim, m.channel_dim)
        err = dev = 0.0
        for rows in exact.row_chunks(v, 0 if m.channel_dim is None else m.channel_dim):
            u = units if units.ndim == 0 else units[rows]
            err = max(err, float(np.abs(v[rows] - m.reference[rows]).max(initial=0.0)))
            dev = max(dev, float(np.abs(v[rows] / u - m.codes[rows]).max(initial=0.0)))
        dev /= max(1.0, m.cw.codebook.max_abs)
        out.append(
            WeightCheck(
                name=m.cw.label,
                codebook=m.cw.codebook.values,
                bits=m.cw.codebook.bits,
                storage=storage_name(tensor),
                count=int(v.size),
                exact=dev <= 1e-5,
                max_error=err,
                trained_int8=m.cw.trained_int8,
            )
        )
        del v
    return out


def integer_weights_without_codebook(model_bytes: bytes, matches) -> int:
    """How many int4/int8 weight tensors of the file hold no codebook weight."""
    fb = exact.read(model_bytes)
    ours = {m.tensor for m in matches}
    return sum(
        1
        for _, t in exact.weight_tensors(fb)
        if t not in ours and fb.subgraphs[0].tensors[t].type in INTEGER_TYPES
    )
