"""Codebook weights in a converted file: found, rewritten on their exact
integer lattice; and the other integer weights, which the converter rounded.

The step of `export` between the converters and the checks, the same on the
tf_keras and the native Keras 3 route.
"""

from __future__ import annotations

import numpy as np

from tflite_export import exact
from tflite_export.errors import ExportError
from tflite_export.report import RoundedWeight
from tflite_export.schema import INTEGER_TYPES, QMAX, TensorType, storage_name


def tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def rounded_weights(data: bytes, float_bytes: bytes, matches) -> list[RoundedWeight]:
    """Integer weight tensors of `data` that hold no codebook weight: the
    converter rounded them from float, with their largest error against the
    float file's tensor of the same name (or of the same size, if only one)."""
    fb, float_fb = exact.read(data), exact.read(float_bytes)
    ours = {m.tensor for m in matches}
    floats = [float_fb.subgraphs[0].tensors[t] for _, t in exact.weight_tensors(float_fb)]
    by_name = {tensor_name(t): t for t in floats}
    out = []
    for _, t in exact.weight_tensors(fb):
        tensor = fb.subgraphs[0].tensors[t]
        if t in ours or tensor.type not in INTEGER_TYPES:
            continue
        got = exact.dequantize(fb, tensor)
        size = int(got.size)
        ref_t = by_name.get(tensor_name(tensor))
        if ref_t is None:
            same = [f for f in floats if int(np.prod(f.shape)) == size]
            ref_t = same[0] if len(same) == 1 else None
        ref = exact.dequantize(float_fb, ref_t) if ref_t is not None else None
        err = None
        if ref is not None and ref.size == size:
            diff = got.reshape(-1).astype(np.float64) - ref.reshape(-1)
            err = float(np.abs(diff).max(initial=0.0))
        out.append(RoundedWeight(tensor_name(tensor), storage_name(tensor), size, err))
    return out


def tolerance_of(tensor, got) -> float:
    """How far a stored tensor may be from its expected value to be the one:
    half a step for integer tensors, float rounding for float ones."""
    q = tensor.quantization
    if tensor.type in QMAX and q is not None and q.scale is not None and len(q.scale):
        return 0.51 * float(np.max(q.scale))
    return exact.EXACT_RTOL * max(1e-30, exact.max_abs(got))


def find_codebook_weights(fb, out, float_bytes, cws) -> list[exact.TensorMatch]:
    """Each codebook weight's tensor: matched in the float file, then located in `fb`."""
    matches, missing = exact.match_weights(exact.read(float_bytes), cws)
    if not missing and out is not float_bytes:
        matches, missing = exact.locate(fb, matches, tolerance_of)
    folded = [cw.label for cw in cws if cw.layer_class == "DiscreteMultiplier"]
    if set(missing) & set(folded):
        vectors = [name for name in missing if name in folded]
        raise ExportError(
            f"The converter folded the DiscreteMultiplier vector(s) {vectors} into the weights "
            "of the layer next to them (a Dense or convolution directly before or after), "
            "where they cannot be checked: only a vector folded into the output channels of a "
            "codebook weight is (a Dense on a codebook directly before the multiplier). "
            "Quantize that layer to a codebook, or put a non-linearity (an activation) "
            f"between the two layers. Received: {missing} not found in the file"
        )
    if missing:
        raise ExportError(
            f"Could not find the codebook weights {missing} in the converted file; the "
            "converter rewrote them beyond a per-channel factor."
        )
    return matches


def write_lattices(fb, matches, allow_inexact, notes, float_biases=None) -> None:
    """Rewrites each integer codebook tensor of `fb` on its exact lattice (in place)."""
    for m in matches:
        if m.folded_into is not None:
            notes.append(
                f"{m.cw.label}: folded by the converter into {m.folded_into}, whose stored "
                f"channels are checked as its codebook values times {m.cw.label}'s"
            )
            continue  # the tensor is written by the weight it was folded into
        tensor = fb.subgraphs[0].tensors[m.tensor]
        if tensor.type not in QMAX:
            continue
        # A weight trained at 8 bits (or learned values without an int4
        # lattice) stays int8 in an int4 file (write_exact).
        qmax = QMAX[TensorType.INT8] if exact.stays_int8(m.cw) else QMAX[tensor.type]
        if m.cw.learned and qmax != QMAX[tensor.type]:
            notes.append(f"{m.cw.label}: learned values have no exact int4 lattice; stored int8")
        g = exact.lattice_step(m.cw, qmax)
        if g is not None:
            exact.write_exact(fb, m, g, (float_biases or {}).get(m.cw.layer))
            continue
        storage = storage_name(tensor)
        if not allow_inexact:
            raise ExportError(
                f"Layer {m.cw.layer!r} ({m.cw.weight}): codebook "
                f"{[float(v) for v in m.cw.codebook.values]} has no exact {storage} "
                f"lattice (no step makes every value an integer within ±{qmax}); "
                f"smallest exact format: {exact.smallest_exact_format(m.cw.codebook)}. "
                "Pass allow_inexact=True (--allow-inexact) to write it anyway."
            )
        notes.append(f"{m.cw.label}: no exact {storage} lattice; written inexact")
