"""Codebook-exact integer storage: lattice steps, codes, flatbuffer patching.

A channel whose values are `codebook value x u_c` is stored exactly as
integers when every codebook value divided by a step `g` is an integer of
magnitude at most `qmax`; the channel's step is then `g x |u_c|`. BatchNorm
folded into the channel only changes `u_c`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow.lite.tools import flatbuffer_utils

from tflite_export import reading, sequence
from tflite_export.schema import (
    BIAS_INPUT,
    QMAX,
    WEIGHT_INPUT,
    BuiltinOperator,
    TensorType,
)
from tfmot_discrete.core import learned
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk import int8, sublayers
from tfmot_discrete.tfk.weights import codebook_items, int8_items

_qk = tfmot.quantization.keras

#: Exactness tolerance, relative: a stored weight is its codebook value when
#: it decodes within this share of the codebook's largest magnitude (and a
#: float tensor matches a weight within this share of its largest value).
EXACT_RTOL = 1e-5

_NUMPY_TYPES = {
    TensorType.FLOAT32: np.float32,
    TensorType.INT8: np.int8,
    TensorType.INT32: np.int32,
    TensorType.FLOAT16: np.float16,
}


#: The integers an 8-bit weight trains to, as a codebook: stored exactly as
#: int8 with the trained step, in every format (int4 files included).
INT8_CODEBOOK = Codebook(np.arange(-int8.INT8_QMAX, int8.INT8_QMAX + 1))


@dataclasses.dataclass
class CodebookWeight:
    """A trained codebook weight, in Keras layout."""

    layer: str
    layer_class: str
    weight: str
    codebook: Codebook
    codes: np.ndarray  # codebook value of each entry
    scales: np.ndarray  # channel scale of each entry (a broadcast view, codes' shape)
    #: Trained with 8-bit fake quantization ("int8" in the mapping): the codebook
    #: is the integers of [-127, 127], the scales the trained steps.
    trained_int8: bool = False
    #: The codebook's values were trained (`learn_values=True`): integers up to
    #: 127 times a power of two, kept int8 in an int4 file without an int4 lattice.
    learned: bool = False

    @property
    def label(self) -> str:
        return f"{self.layer}/{self.weight}"

    @property
    def values(self) -> np.ndarray:
        """Codebook value x channel scale, float32: the trained weight (computed
        on each call, so that a large model's weights are not held twice)."""
        return np.multiply(self.codes, self.scales, dtype=np.float32)


def codebook_weights(model) -> list[CodebookWeight]:
    """Every codebook-quantized weight of a QAT model (or DiscreteMultiplier),
    then every weight trained with 8-bit fake quantization."""
    inners = {}
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, _qk.QuantizeWrapper) else layer
        inners[inner.name] = inner

    def weight(item, codes, scales, **fields) -> list[CodebookWeight]:
        # A user's layer of sub-layers: the layout of the sub-layer holding it.
        owner = sublayers.weight_owner(inners[item.layer], item.weight)
        cls = sequence.layout_class(owner)
        # A recurrent kernel its cell cuts (per gate) is stored as one tensor per piece.
        return [
            CodebookWeight(
                layer=item.layer,
                layer_class=cls,
                weight=f"{item.weight}[{gate}]" if gate else item.weight,
                codes=c,
                scales=s,
                **fields,
            )
            for (gate, c), (_, s) in zip(
                sequence.gate_pieces(owner, item.weight, codes),
                sequence.gate_pieces(owner, item.weight, scales),
            )
        ]

    out = []
    for item in codebook_items(model):
        latent, q, qvars = item.latent, item.quantizer, item.qvars
        # float32 as trained; the scales stay a broadcast view of one number per
        # channel: a large model's weights are held once more (the codes), not six
        # times.
        values = np.asarray(q(latent, False, weights=qvars), np.float32)
        scales = np.broadcast_to(np.asarray(q.quantized_scale(latent, qvars)), values.shape)
        codes = np.empty_like(values)
        codebook = q.codebook_of(qvars)  # the learned values, with learn_values=True
        table = codebook.values.astype(np.float32)
        for rows in row_chunks(values):
            codes[rows] = table[codebook.index_numpy(values[rows] / scales[rows])]
        del values
        out += weight(item, codes, scales, codebook=codebook, learned=q.learn_values)
    for item in int8_items(model):
        iv = int8.int8_values(item.quantizer, item.latent, item.qvars)
        out += weight(item, iv.codes, iv.steps, codebook=INT8_CODEBOOK, trained_int8=True)
    return out


#: Large arrays are compared and converted this many entries at a time, so a
#: step's temporary memory does not grow with the model.
CHUNK = 1 << 20


def max_abs(a: np.ndarray) -> float:
    """`max |a|` without a temporary copy of `a` (0 for an empty array)."""
    if a.size == 0:
        return 0.0
    return float(max(abs(float(a.max())), abs(float(a.min()))))


def row_chunks(a: np.ndarray, axis: int = 0):
    """Slices along `axis` covering `a`, each about `CHUNK` entries."""
    if a.ndim == 0 or a.size == 0:
        yield ...
        return
    n = a.shape[axis]
    step = max(1, CHUNK // max(1, a.size // n))
    for i in range(0, n, step):
        index = [slice(None)] * a.ndim
        index[axis] = slice(i, i + step)
        yield tuple(index)


def tflite_layout(cls: str, weight: str, a: np.ndarray) -> tuple[np.ndarray, int | None]:
    """A Keras weight in the layout the TFLite converter writes, and its
    output-channel dimension there (None: one scale per tensor)."""
    cls = sequence.conv_class(cls) or cls  # a convolutional recurrent gate kernel
    if sequence.handles(cls):
        return sequence.tflite_layout(cls, weight, a)
    weight = weight.rsplit("/", 1)[-1]  # a sub-layer's weight in a user's layer: "d1/kernel"
    if cls == "Dense":
        return a.T, 0
    if cls in ("Conv2D",) or (cls == "SeparableConv2D" and weight == "pointwise_kernel"):
        return np.transpose(a, (3, 0, 1, 2)), 0
    if cls == "Conv1D":
        return np.transpose(a, (2, 0, 1))[:, None], 0
    if cls == "SeparableConv1D" and weight == "pointwise_kernel":
        return np.transpose(a, (2, 0, 1))[:, None], 0
    if weight == "depthwise_kernel":
        if a.ndim == 3:  # SeparableConv1D: (w, in, mult)
            return a.reshape(1, 1, a.shape[0], -1), 3
        return a.reshape(1, a.shape[0], a.shape[1], -1), 3
    if cls == "Conv2DTranspose":
        return np.transpose(a, (2, 0, 1, 3)), 0
    if cls == "Conv1DTranspose":
        return np.transpose(a, (1, 0, 2))[:, None], 0
    if cls == "Conv3D":
        return a, 4
    if cls == "Conv3DTranspose":  # stored as Keras holds it: (d, h, w, out, in)
        return a, 3
    if cls in ("Embedding", "ReversibleEmbedding") and weight == "embeddings":
        return a, 0  # a row per token (GATHER's table; tied, also the logits' FC weight)
    if cls == "ReversibleEmbedding" and weight == "reverse_embeddings":
        return a.T, 0  # the logits' FC weight, (vocabulary, dim)
    return a, None


def held_more_than_once(cw: CodebookWeight) -> bool:
    """True when a file may store the weight in more than one tensor: an
    unrolled recurrent layer's (a step whose activation's factor the converter
    folded in), a ReversibleEmbedding's table (GATHER's, and when tied the
    logits' FULLY_CONNECTED weight, which weight-only formats store apart)."""
    return sequence.handles(cw.layer_class) or cw.layer_class == "ReversibleEmbedding"


@dataclasses.dataclass
class TensorMatch:
    """Where a codebook weight lives in a `.tflite` file, and its channel units."""

    cw: CodebookWeight
    tensor: int  # index of the stored tensor (int8/int4/float)
    op_index: int  # the operator that consumes it
    channel_dim: int | None
    codes: np.ndarray  # codebook values, TFLite layout
    units: np.ndarray  # per-channel unit (scale x BatchNorm factor), signed
    reference: np.ndarray  # the float value the channel should decode to
    #: A `DiscreteMultiplier` the converter folded into the weight next to it:
    #: that weight's label. The match is then of that weight's tensor, whose
    #: `codes` are its codebook values times the vector's (one per channel);
    #: the other weight's own match writes the tensor.
    folded_into: str | None = None


def _buffer_array(model, tensor) -> np.ndarray | None:
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    dtype = _NUMPY_TYPES.get(tensor.type)
    if tensor.type == TensorType.INT4:
        raw = np.asarray(data, np.uint8)
        lo = (raw & 0x0F).astype(np.int8)
        hi = (raw >> 4).astype(np.int8)
        lo[lo > 7] -= 16
        hi[hi > 7] -= 16
        vals = np.stack([lo, hi], axis=1).reshape(-1)[: int(np.prod(tensor.shape))]
        return vals.reshape(tensor.shape)
    if dtype is None:
        return None
    # A view of the buffer, not a copy.
    return np.ascontiguousarray(data, np.uint8).view(dtype).reshape(tensor.shape)


def dequantize_values(raw, scales, zero_points, axis: int, dtype=np.float64) -> np.ndarray:
    """`(raw - zero point) x scale` as `dtype`: one scale for the tensor, or
    one per index of `axis`.

    Example:

    >>> dequantize_values(np.array([[2, 4], [2, 4]]), [0.5, 0.25], [0, 0], 0).tolist()
    [[1.0, 2.0], [0.5, 1.0]]
    """
    scales = np.asarray(scales, dtype).reshape(-1)
    zps = np.asarray(zero_points, dtype).reshape(-1)
    if scales.size == 1:
        return (raw - zps[0]) * scales[0]
    return (raw - channel_broadcast(zps, raw.ndim, axis)) * channel_broadcast(
        scales, raw.ndim, axis
    )


def dequantize(model, tensor) -> np.ndarray | None:
    """A constant tensor of the flatbuffer as float32 (None: no data); a
    float32 tensor is a read-only view of its buffer, not a copy."""
    raw = _buffer_array(model, tensor)
    if raw is None:
        return None
    if tensor.type == TensorType.FLOAT32:
        out = raw.view()
        out.flags.writeable = False
        return out
    q = tensor.quantization
    if tensor.type == TensorType.FLOAT16 or q is None or q.scale is None or len(q.scale) == 0:
        return raw.astype(np.float32)
    zp = q.zeroPoint if q.zeroPoint is not None else [0] * len(q.scale)
    return dequantize_values(raw, q.scale, zp, q.quantizedDimension, np.float32)


def weight_tensors(model) -> list[tuple[int, int]]:
    """`(op index, stored tensor index)` of every constant weight input."""
    sg = model.subgraphs[0]
    producers = {}
    for i, op in enumerate(sg.operators):
        for t in op.outputs:
            producers[int(t)] = i
    out = []
    for i, op in enumerate(sg.operators):
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        if code not in WEIGHT_INPUT:
            continue
        idxs = [WEIGHT_INPUT[code]] if WEIGHT_INPUT[code] is not None else [0, 1]
        for k in idxs:
            t = int(op.inputs[k])
            if t < 0:
                continue
            # Weight-only files feed the op through a DEQUANTIZE of the stored tensor.
            p = producers.get(t)
            if p is not None:
                pop = sg.operators[p]
                if model.operatorCodes[pop.opcodeIndex].builtinCode != BuiltinOperator.DEQUANTIZE:
                    continue
                t = int(pop.inputs[0])
            if _buffer_array(model, sg.tensors[t]) is not None:
                out.append((i, t))
    return out


def _candidates(model) -> list[tuple[int, int, object, int]]:
    """`(op index, tensor index, tensor, number of entries)` of every weight
    input; `dequantize` reads one when its size fits (never all at once)."""
    sg = model.subgraphs[0]
    out = []
    for op_i, t in weight_tensors(model):
        tensor = sg.tensors[t]
        size = int(np.prod(tensor.shape)) if tensor.shape is not None else 0
        out.append((op_i, t, tensor, size))
    return out


def _max_abs_diff(got: np.ndarray, ref: np.ndarray, dim) -> float:
    """`max |got - ref|`, a chunk of channels at a time."""
    worst = 0.0
    axis = 0 if dim is None else dim
    for rows in row_chunks(ref, axis):
        worst = max(worst, float(np.abs(got[rows] - ref[rows]).max(initial=0.0)))
    return worst


def match_weights(model, cws: list[CodebookWeight], tolerance_of=None) -> tuple[list, list]:
    """Finds each codebook weight among the file's weight tensors by content.

    A tensor matches when, channel by channel, it equals the expected values
    times one factor (1, or a folded BatchNorm factor) within `tolerance_of`
    (a function of the stored tensor; float rounding for float tensors, half a
    step for integer ones).

    Returns:
        (matches, names of codebook weights not found)
    """
    candidates = _candidates(model)
    used = set()
    matches, missing = [], []
    host_factors = {}  # id(match) -> its channel factors (a folded multiplier's values)
    for cw in cws:
        codes, dim = tflite_layout(cw.layer_class, cw.weight, cw.codes)
        scales, _ = tflite_layout(cw.layer_class, cw.weight, cw.scales)
        found = []
        # Unrolled recurrent layers may hold a weight more than once (a step
        # whose activation's factor the converter folded in): find every copy.
        every_copy = held_more_than_once(cw)
        exp = None  # the expected values (float32, a fresh array of their own)
        for op_i, t, tensor, size in candidates:
            if t in used or size != codes.size:
                continue
            got = dequantize(model, tensor)
            if got is None:
                continue
            if exp is None:
                exp, _ = tflite_layout(cw.layer_class, cw.weight, cw.values)
            got = got.reshape(exp.shape)
            factors = _channel_factors(got, exp, dim)
            if factors is None:
                continue
            tol = (
                tolerance_of(tensor, got) if tolerance_of else EXACT_RTOL * max(1e-30, max_abs(got))
            )
            # The reference is written over `exp` (not a second copy of the weight).
            ref = np.multiply(
                exp, channel_broadcast(factors, exp.ndim, dim).astype(np.float32), out=exp
            )
            exp = None
            if _max_abs_diff(got, ref, dim) <= tol:
                found.append((op_i, t, factors, ref))
                used.add(t)
                if not every_copy:
                    break
            del got, ref
        if not found:
            missing.append(cw.label)
            continue
        per_ch_scale = _per_channel(scales, dim)
        for op_i, t, factors, ref in found:
            matches.append(TensorMatch(cw, t, op_i, dim, codes, factors * per_ch_scale, ref))
            host_factors[id(matches[-1])] = factors
    folded = [f for f in (_folded(cw, matches, host_factors) for cw in cws) if f is not None]
    folded_labels = {f.cw.label for f in folded}
    return matches + folded, [name for name in missing if name not in folded_labels]


def _folded(cw: CodebookWeight, matches: list[TensorMatch], host_factors) -> TensorMatch | None:
    """A `DiscreteMultiplier`'s vector that the converter folded into the
    weight of the layer before it (a Dense's output channels times the
    vector): the match of that weight, if another codebook weight's channels
    were found multiplied by exactly the vector's values, else None."""
    if cw.layer_class != "DiscreteMultiplier" or cw.codes.ndim != 1:
        return None
    if any(m.cw is cw for m in matches):
        return None  # found as it is (a MUL operator's constant)
    vector = cw.values.astype(np.float64)
    tol = EXACT_RTOL * max(1e-30, max_abs(vector))
    for host in matches:
        factors = host_factors.get(id(host))
        if host.channel_dim is None or host.folded_into or factors is None:
            continue
        if factors.shape != vector.shape or np.abs(factors - vector).max() > tol:
            continue
        # The tensor holds host codes x host scale x vector: checked as the
        # vector's codes times the host's codes, in units of both scales.
        host_scale = host.units / np.where(factors == 0, 1.0, factors)
        vector_codes = channel_broadcast(cw.codes, host.codes.ndim, host.channel_dim)
        return TensorMatch(
            cw,
            host.tensor,
            host.op_index,
            host.channel_dim,
            np.multiply(host.codes, vector_codes, dtype=np.float32),
            host_scale * _per_channel(cw.scales, 0),
            host.reference,
            folded_into=host.cw.label,
        )
    return None


def channel_broadcast(v, ndim: int, dim: int | None) -> np.ndarray:
    """Per-channel values `v` shaped to broadcast along `dim` of an `ndim`-D
    array (`dim=None`: one value for the whole array).

    Example:

    >>> channel_broadcast([1.0, 2.0], 3, 1).shape
    (1, 2, 1)
    """
    if dim is None:
        return np.asarray(v).reshape(())
    shape = [1] * ndim
    shape[dim] = -1
    return np.asarray(v).reshape(shape)


def _per_channel(a, dim):
    """First entry of each channel of an array that is constant per channel."""
    if dim is None:
        return np.asarray(a).reshape(-1)[:1].reshape(())
    moved = np.moveaxis(a, dim, 0).reshape(a.shape[dim], -1)
    return moved[:, 0]


def _channel_factors(got, exp, dim):
    """Least-squares factor per channel so that got ~= factor x exp."""
    if dim is None:
        g, e = got.reshape(1, -1), exp.reshape(1, -1)
    else:
        g, e = np.moveaxis(got, dim, 0), np.moveaxis(exp, dim, 0)
    den = np.zeros(g.shape[0])
    num = np.zeros(g.shape[0])
    for rows in row_chunks(e):
        r = rows[0]
        n = len(den[r])
        ge, ee = g[r].reshape(n, -1), e[r].reshape(n, -1)
        den[r] = np.einsum("ij,ij->i", ee, ee, dtype=np.float64)
        num[r] = np.einsum("ij,ij->i", ge, ee, dtype=np.float64)
    f = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    if np.any(~np.isfinite(f)):
        return None
    return f.reshape(()) if dim is None else f


def stays_int8(cw: CodebookWeight) -> bool:
    """True when a weight is stored as int8 even in an int4 file: trained at 8
    bits, or learned values without an exact int4 lattice."""
    if cw.trained_int8:
        return True
    return cw.learned and cw.codebook.integer_step(QMAX[TensorType.INT4]) is None


def lattice_step(cw: CodebookWeight, qmax: int) -> float | None:
    """The step of the integers `cw` is stored with at `qmax`, or None.

    Learned values at 8 bits keep the power-of-two step they trained on
    (`core.learned.grid_step`), so that each stored channel step
    `step x scale` is exact and the file decodes to the trained weights bit
    for bit; other codebooks take the coarsest step that fits.
    """
    if cw.learned and qmax >= learned.VALUE_QMAX:
        return float(learned.grid_step(cw.codebook.values))
    return cw.codebook.integer_step(qmax)


def smallest_exact_format(codebook: Codebook) -> str:
    if codebook.integer_step(QMAX[TensorType.INT4]) is not None:
        return "int4"
    if codebook.integer_step(QMAX[TensorType.INT8]) is not None:
        return "int8"
    return "float"


def _pack_int4(codes: np.ndarray) -> np.ndarray:
    flat = codes.reshape(-1).astype(np.int8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    lo = flat[0::2].astype(np.uint8) & 0x0F
    hi = flat[1::2].astype(np.uint8) & 0x0F
    return (lo | (hi << 4)).astype(np.uint8)


def _own_buffer(model, tensor_index):
    """Makes sure the tensor's buffer is used by no other tensor."""
    sg = model.subgraphs[0]
    t = sg.tensors[tensor_index]
    shared = [i for i, o in enumerate(sg.tensors) if o.buffer == t.buffer and i != tensor_index]
    if shared:
        new = type(model.buffers[t.buffer])()
        new.data = np.array(model.buffers[t.buffer].data, np.uint8)
        model.buffers.append(new)
        t.buffer = len(model.buffers) - 1
    return model.buffers[t.buffer]


def write_exact(model, m: TensorMatch, g: float, float_bias=None) -> None:
    """Rewrites an integer tensor with codes on the lattice `g` (in place);
    the int32 biases of its operators follow the new step, rounded from
    `float_bias` (the float bias the converter quantized) when given."""
    sg = model.subgraphs[0]
    t = sg.tensors[m.tensor]
    units = np.asarray(m.units, np.float64).reshape(-1)
    sign = np.where(units < 0, -1.0, 1.0)
    mag = np.where(np.abs(units) > 0, np.abs(units), 1.0)
    steps = g * mag
    signs = channel_broadcast(sign, m.codes.ndim, m.channel_dim)
    ints = np.empty(m.codes.shape, np.int8)
    for rows in row_chunks(m.codes, 0 if m.channel_dim is None else m.channel_dim):
        codes = m.codes[rows] * (signs if signs.ndim == 0 else signs[rows]) / g
        rounded = np.round(codes)
        # Codes are float32 codebook values: 127 x float32 rounding < 1e-4.
        if np.abs(codes - rounded).max(initial=0.0) > 1e-4:
            raise AssertionError(f"{m.cw.label}: codes not integral on the chosen lattice")
        ints[rows] = rounded
    buf = _own_buffer(model, m.tensor)
    if stays_int8(m.cw) and t.type == TensorType.INT4:
        t.type = TensorType.INT8  # an 8-bit weight stays int8 inside an int4 file
    if t.type == TensorType.INT4:
        buf.data = _pack_int4(ints)
    else:
        buf.data = ints.reshape(-1).view(np.uint8)
    q = t.quantization
    if m.channel_dim is None:
        steps = steps[:1] if steps.size else np.array([g])
        q.quantizedDimension = 0
    else:
        q.quantizedDimension = m.channel_dim
    q.scale = [float(s) for s in steps.astype(np.float32)]
    q.zeroPoint = [0] * len(q.scale)
    # Every operator reading the tensor (one per step of an unrolled layer).
    for op_i in _readers(model, m.tensor) or [m.op_index]:
        _requantize_bias(
            model,
            dataclasses.replace(m, op_index=op_i),
            np.asarray(q.scale, np.float64),
            float_bias,
        )


def _readers(model, tensor_index: int) -> list[int]:
    """The operators whose weight input is the tensor."""
    return [op_i for op_i, t in weight_tensors(model) if t == tensor_index]


def _requantize_bias(model, m: TensorMatch, new_w_scales, float_bias=None):
    """int32 bias step = input step x weight step: follow the new weight step.

    The new integers are rounded from `float_bias` where it is the bias the
    converter rounded (within half of its step of the stored one), so the
    file's bias is one rounding from the float one; else from the stored
    integers, which rounds twice (up to half an old step more)."""
    sg = model.subgraphs[0]
    op = sg.operators[m.op_index]
    code = model.operatorCodes[op.opcodeIndex].builtinCode
    k = BIAS_INPUT.get(code)
    if k is None or k >= len(op.inputs) or int(op.inputs[k]) < 0:
        return
    bias_t = sg.tensors[int(op.inputs[k])]
    if (
        bias_t.type != TensorType.INT32
        or bias_t.quantization is None
        or bias_t.quantization.scale is None
    ):
        return
    in_t = sg.tensors[int(op.inputs[0])]
    in_scale = float(np.asarray(in_t.quantization.scale).reshape(-1)[0])
    raw = _buffer_array(model, bias_t).astype(np.float64)
    old = np.asarray(bias_t.quantization.scale, np.float64).reshape(-1)
    old = old if old.size == raw.size else np.full(raw.shape, old[0])
    value = raw * old
    if float_bias is not None and np.size(float_bias) == raw.size:
        exact_bias = np.asarray(float_bias, np.float64).reshape(raw.shape)
        # float32 rounding of the converter's own division: a relative 1e-3 of a step.
        if np.all(np.abs(exact_bias - value) <= 0.5 * old * (1 + 1e-3)):
            value = exact_bias
    new_scale = in_scale * np.broadcast_to(new_w_scales, raw.shape)
    new = np.round(value / new_scale).astype(np.int64)
    new = np.clip(new, -(2**31) + 1, 2**31 - 1).astype(np.int32)
    buf = _own_buffer(model, int(op.inputs[k]))
    buf.data = new.view(np.uint8).copy()
    bias_t.quantization.scale = [float(s) for s in new_scale.astype(np.float32)]
    bias_t.quantization.zeroPoint = [0] * len(bias_t.quantization.scale)


def read(model_bytes: bytes):
    """The flatbuffer's object tree; its buffers are read-only views of
    `model_bytes`, not copies (a change replaces a buffer's data, never writes
    into it).

    Raises:
        TfliteFileError: For bytes without the `.tflite` identifier.
    """
    reading.check_header(model_bytes)
    return flatbuffer_utils.read_model_from_bytearray(memoryview(model_bytes))


def write(model) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def locate(model, matches: list[TensorMatch], tolerance_of) -> tuple[list, list]:
    """Finds the tensors of `matches` (made on the float file) in another file
    of the same model, by content: dequantized within `tolerance_of` of the
    float reference. Units stay those of the float file, which are exact."""
    candidates = _candidates(model)
    used, found, missing = set(), [], []
    for m in matches:
        if m.folded_into is not None:
            continue  # follows the weight it was folded into (below)
        # A ReversibleEmbedding's tied table: one float tensor, two in a
        # weight-only file (GATHER's float table, the FULLY_CONNECTED int8 one).
        every_copy = m.cw.layer_class == "ReversibleEmbedding"
        hits = []
        for op_i, t, tensor, size in candidates:
            if t in used or size != m.reference.size:
                continue
            got = dequantize(model, tensor)
            if got is None:
                continue
            got = got.reshape(m.reference.shape)
            if _max_abs_diff(got, m.reference, m.channel_dim) <= tolerance_of(tensor, got):
                hits.append((op_i, t))
                used.add(t)
                if not every_copy:
                    break
            del got
        if not hits:
            missing.append(m.cw.label)
            continue
        found += [dataclasses.replace(m, op_index=op_i, tensor=t) for op_i, t in hits]
    hosts = {f.cw.label: f for f in found}
    for m in matches:
        host = hosts.get(m.folded_into) if m.folded_into is not None else None
        if host is not None:
            found.append(dataclasses.replace(m, op_index=host.op_index, tensor=host.tensor))
        elif m.folded_into is not None:
            missing.append(m.cw.label)
    return found, missing


def stored_values(model, tensor) -> np.ndarray | None:
    """The integers (or floats) a constant tensor stores, in its shape (int4 unpacked)."""
    return _buffer_array(model, tensor)
