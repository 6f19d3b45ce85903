"""`tflm_packed`: codebook weights as ceil(log2 K)-bit indices into value tables.

A `full_int8` file stores a codebook weight as int8 codes times a step per
output channel; every channel then holds the same few int8 codes (the
codebook divided by one lattice step), so one small table per tensor and
`ceil(log2 K)`-bit indices hold it exactly. TensorFlow Lite for
Microcontrollers' LUT compression (`tflite_micro...compression.compress`)
writes such tensors and inserts `DECODE` operators that expand them into
scratch memory before the layer that reads them. Only TFLM runs these files.

TFLM's decoder (decode_state_lut.cc) takes its channels from the decoded
tensor's quantization, one per scale, and steps `stride` values through the
tables per channel, whatever the metadata's axis field says: a per-tensor
table as the compressor writes it (stride = table length) decodes every
channel after the first from the wrong bytes. One table serves all channels
with stride 0, which `pack` writes.

The compressor also keeps more than the kernels read; `pack` removes it,
each removal checked by running the file on TFLM (see `strip_overhead`):

- the encoded index tensor keeps the weight's per-channel quantization
  parameters (12 bytes per channel): `DECODE` reads none of them;
- per-channel zero points are int64 and all zero: TFLM's allocator accepts
  one zero point for all channels (micro_allocator.cc, "as a space-saving
  optimization ..."); equal scales (`scale=None` without BatchNorm) become
  one;
- int32 bias tensors carry per-channel scales and zero points: the int8
  FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV kernels
  derive their multipliers from the input, filter and output scales only;
- tensor names, except on the inputs, outputs and decoded weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import warnings

import numpy as np
from tflite_micro.tensorflow.lite.micro.compression import compress, model_editor, spec
from tflite_micro.tensorflow.lite.micro.tools import (
    tflite_flatbuffer_align_wrapper as align,
)

from tflite_export import compat, isolation, reading
from tflite_export.errors import PackedFileError, TfliteFileError
from tflite_export.reading import DECODE_OP
from tflite_export.schema import BIAS_INPUT, WEIGHT_INPUT, BuiltinOperator, TensorType

__all__ = [
    "DECODE_OP",
    "MAX_BITS",
    "MAX_VALUES",
    "PackedFileError",
    "PackedTensor",
    "TableChoice",
    "TflmComparison",
    "choose_tables",
    "compare_on_tflm",
    "index_bits",
    "is_packed",
    "pack",
    "read_packed",
    "strip_overhead",
]

#: Layers whose constant weights TFLM's kernels read through a DECODE output.
_TFLM_LAYERS = (
    BuiltinOperator.FULLY_CONNECTED,
    BuiltinOperator.CONV_2D,
    BuiltinOperator.DEPTHWISE_CONV_2D,
    BuiltinOperator.TRANSPOSE_CONV,
)
#: Index widths TFLM's LUT decoder accepts.
MAX_BITS = 7
#: Largest codebook a packed tensor holds.
MAX_VALUES = 2**MAX_BITS
# DECODE common metadata (DCM), the first bytes of a packed tensor's
# ancillary data, by offset (TFLM's decode_state_lut.cc):
_DCM_BYTES = 16  # DCM length, ahead of the value tables
_DCM_TYPE = 0  # byte 0: decode type
_DCM_VERSION = 1  # byte 1: DCM version
_DCM_LUT_VERSION = 4  # byte 4: LUT version
_DCM_AXIS_BITS = 5  # byte 5: (axis << 4) | index bit width
_DCM_STRIDE = 6  # byte 6: value-table stride
_LUT_TYPE = 0  # decode type of LUT decoding
_BITS_MASK = 0x07  # index bit width, low bits of byte 5
_AXIS_SHIFT = 4  # axis, high nibble of byte 5
_PER_TENSOR_AXIS = 0xF  # axis of one table for the tensor


def index_bits(n_values: int) -> int:
    """Bits of an index into a table of `n_values` values (at least 1).

    >>> [index_bits(k) for k in (1, 2, 3, 4, 5, 8, 9, 128)]
    [1, 1, 2, 2, 3, 3, 4, 7]
    """
    return max(1, int(np.ceil(np.log2(max(1, n_values)))))


@dataclasses.dataclass
class TableChoice:
    """How one int8 tensor is packed: index width and table layout."""

    bits: int
    axis: int | None  # None: one table for the whole tensor
    table_len: int  # values per table
    tables: int  # number of tables

    def stored_bytes(self, count: int) -> int:
        """Index bytes plus the DECODE metadata and value tables (int8)."""
        return -(-count * self.bits // 8) + _DCM_BYTES + self.tables * self.table_len


def choose_tables(codes: np.ndarray, channel_dim: int | None) -> TableChoice:
    """One table for the tensor, or one per channel where that needs fewer bits.

    Every channel of a codebook weight in a `full_int8` file normally holds
    the same int8 codes, so one table serves the tensor. Channels that hold
    different codes (an asymmetric codebook through a negative BatchNorm
    factor) get a table each when that makes the indices narrower; ties go
    to the smaller layout.

    Args:
        codes: The int8 weight tensor.
        channel_dim: Its output-channel axis (None: one table only).

    Raises:
        PackedFileError: When no layout fits in 7-bit indices.

    Example:
        >>> c = choose_tables(np.array([[-127, 127], [127, -127]], np.int8), 0)
        >>> (c.bits, c.axis, c.table_len, c.tables)
        (1, None, 2, 1)
    """
    union = np.unique(codes)
    choices = [TableChoice(index_bits(union.size), None, int(union.size), 1)]
    if channel_dim is not None and codes.ndim > 1 and channel_dim in (0, codes.ndim - 1):
        rows = np.moveaxis(codes, channel_dim, 0).reshape(codes.shape[channel_dim], -1)
        longest = max(np.unique(r).size for r in rows)
        choices.append(TableChoice(index_bits(longest), channel_dim, longest, rows.shape[0]))
    best = min(choices, key=lambda c: (c.bits, c.stored_bytes(codes.size)))
    if best.bits > MAX_BITS:
        raise PackedFileError(
            f"A tensor holds {union.size} distinct int8 values; TFLM's value tables take at "
            f"most {MAX_VALUES} ({MAX_BITS}-bit indices)."
        )
    return best


@dataclasses.dataclass
class PackedTensor:
    """A packed tensor read back from a file, decoded without TFLM."""

    name: str
    encoded: int  # index of the index tensor (uint8 bytes)
    decoded: int  # index of the DECODE output the layer reads
    bits: int
    axis: int | None  # None: one value table
    tables: np.ndarray  # (tables, table length), the decoded tensor's dtype
    values: np.ndarray  # the decoded tensor (int8), in its own shape
    scales: np.ndarray  # quantization scale per channel (or one)
    channel_dim: int  # quantized dimension of the decoded tensor
    stored_bytes: int  # index bytes + DECODE metadata and tables

    def dequantized(self) -> np.ndarray:
        """`values x scale` of each channel, float64."""
        v = self.values.astype(np.float64)
        if self.scales.size <= 1:
            return v * (float(self.scales[0]) if self.scales.size else 1.0)
        shape = [1] * v.ndim
        shape[self.channel_dim] = -1
        return v * self.scales.reshape(shape)


is_packed = reading.is_packed


def _read_object(model_bytes: bytes):
    try:
        return reading.read_model(model_bytes)
    except TfliteFileError as e:
        raise PackedFileError(str(e)) from e


def _unpack_indices(data: bytes, bits: int, count: int) -> np.ndarray:
    """Indices packed most significant bit first, `bits` each."""
    raw = np.unpackbits(np.frombuffer(data, np.uint8))
    fields = raw[: count * bits].reshape(count, bits).astype(np.int64)
    return fields @ (1 << np.arange(bits - 1, -1, -1))


def _buffer(model, tensor) -> bytes:
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    return b"" if data is None else bytes(bytearray(data))


def read_packed(model_bytes: bytes) -> list[PackedTensor]:
    """Every tensor a `DECODE` operator expands, decoded from the file's bytes.

    Raises:
        PackedFileError: For a damaged flatbuffer, metadata or index data.
    """
    model = _read_object(model_bytes)
    if not model.subgraphs:
        raise PackedFileError("The file holds no subgraph.")
    sg = model.subgraphs[0]
    out = []
    for op in sg.operators or []:
        if not reading.is_decode(model.operatorCodes[op.opcodeIndex]):
            continue
        ins, outs = [int(i) for i in op.inputs], [int(i) for i in op.outputs]
        if len(ins) != 2 * len(outs):
            raise PackedFileError(
                f"A DECODE operator has {len(ins)} inputs for {len(outs)} outputs; expected two "
                "inputs (indices, value tables) per output."
            )
        for k, dec in enumerate(outs):
            out.append(_decode_one(model, sg, ins[2 * k], ins[2 * k + 1], dec))
    return out


def _decode_one(model, sg, enc_i, anc_i, dec_i) -> PackedTensor:
    """Decodes one tensor as TFLM's LUT decoder does (decode_state_lut.cc).

    The decoder takes its channels from the output tensor's quantization (one
    per scale, along the quantized dimension, which must be the first or the
    last), reads channel `c`'s table `c x stride` values after the metadata
    and the indices in storage order, most significant bit first. A stride of
    0 makes every channel read the same table.
    """
    n_tensors = len(sg.tensors)
    if not all(0 <= i < n_tensors for i in (enc_i, anc_i, dec_i)):
        raise PackedFileError(
            f"A DECODE operator names tensor indices {(enc_i, anc_i, dec_i)}; the file has "
            f"{n_tensors} tensors."
        )
    dec = sg.tensors[dec_i]
    name = (dec.name or b"").decode(errors="replace").removesuffix("_decoded")
    where = f"packed tensor {name!r}"
    anc = _buffer(model, sg.tensors[anc_i])
    enc = _buffer(model, sg.tensors[enc_i])
    if len(anc) < _DCM_BYTES:
        raise PackedFileError(
            f"{where}: its DECODE metadata holds {len(anc)} bytes; at least {_DCM_BYTES} needed."
        )
    kind, version, lut_version = anc[_DCM_TYPE], anc[_DCM_VERSION], anc[_DCM_LUT_VERSION]
    if kind != _LUT_TYPE or version != 1 or lut_version != 1:
        raise PackedFileError(
            f"{where}: DECODE metadata of type {kind} version {version}, LUT version "
            f"{lut_version}; only LUT decoding (type 0, versions 1) is read."
        )
    bits, stride = anc[_DCM_AXIS_BITS] & _BITS_MASK, anc[_DCM_STRIDE]
    if not 1 <= bits <= MAX_BITS:
        raise PackedFileError(f"{where}: index width {bits} bits; TFLM decodes 1 to {MAX_BITS}.")
    if dec.type != TensorType.INT8:
        raise PackedFileError(f"{where}: decodes to tensor type {dec.type}; int8 is read.")
    shape = tuple(int(d) for d in dec.shape)
    count = int(np.prod(shape))
    q = dec.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64)
    dim = int(q.quantizedDimension) if q is not None else 0
    channels = max(1, scales.size)
    if channels > 1 and (dim not in (0, len(shape) - 1) or shape[dim] != channels):
        raise PackedFileError(
            f"{where}: {channels} channel scales on axis {dim} of shape {shape}; TFLM decodes "
            "per-channel tensors along their first or last axis."
        )
    need = -(-count * bits // 8)
    if len(enc) != need:
        raise PackedFileError(
            f"{where}: {len(enc)} index bytes; {count} weights at {bits} bits need {need}."
        )
    idx = _unpack_indices(enc, bits, count)
    last_axis = channels > 1 and dim == len(shape) - 1
    flat_channel = (
        np.arange(count) % channels if last_axis else np.arange(count) // (count // channels)
    )
    table_bytes = np.frombuffer(anc[_DCM_BYTES:], np.int8)
    pos = flat_channel * stride + idx
    if pos.size and int(pos.max()) >= table_bytes.size:
        c = int(flat_channel[np.argmax(pos)])
        raise PackedFileError(
            f"{where}: channel {c} reads value {int(pos.max())} of its value tables, which hold "
            f"{table_bytes.size} values ({bits}-bit indices, table stride {stride})."
        )
    if stride == 0 or channels == 1:
        tables = table_bytes[None, :]
    else:
        tables = np.resize(table_bytes, channels * stride).reshape(channels, stride)
    return PackedTensor(
        name=name,
        encoded=enc_i,
        decoded=dec_i,
        bits=int(bits),
        axis=None if stride == 0 or channels == 1 else dim,
        tables=tables,
        values=table_bytes[pos].reshape(shape),
        scales=scales,
        channel_dim=dim,
        stored_bytes=len(enc) + len(anc),
    )


def _aligned(model_bytes: bytes) -> bytes:
    """Rewrites the flatbuffer with TFLM's alignment of each buffer."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.tflite"), os.path.join(tmp, "out.tflite")
        with open(src, "wb") as f:
            f.write(model_bytes)
        align.align_tflite_model(src, dst)
        with open(dst, "rb") as f:
            return f.read()


def strip_overhead(model_bytes: bytes) -> bytes:
    """Rewrites a compressed file with only what TFLM reads (module docstring).

    Index tensors lose their quantization; a tensor decoded from one value
    table gets table stride 0 (TFLM's decoder steps `stride` values per
    channel, so every channel reads the same table) and one scale when all
    its channels share it; zero points that are all zero become one; int32
    biases of the weight layers lose their quantization. Tensor names stay on
    the model's inputs and outputs and on the decoded weights only (TFLM
    reads none).
    """
    model = model_editor.read(model_bytes)
    for sg in model.subgraphs:
        weights, biases, decoded, patched = [], [], [], set()
        for op in sg.operators:
            if op.custom_code == DECODE_OP:
                for enc, anc, dec in zip(op.inputs[0::2], op.inputs[1::2], op.outputs):
                    compat.drop_quantization(enc)
                    data = bytearray(anc.buffer.data)
                    if data[_DCM_AXIS_BITS] >> _AXIS_SHIFT == _PER_TENSOR_AXIS:
                        _one_scale(dec)
                        if id(anc.buffer) not in patched:
                            data[_DCM_STRIDE] = 0
                            anc.buffer.data = bytes(data)
                            patched.add(id(anc.buffer))
                    weights.append(dec)
                    decoded.append(dec)
            elif op.opcode in _TFLM_LAYERS:
                w, b = WEIGHT_INPUT[op.opcode], BIAS_INPUT[op.opcode]
                if w < len(op.inputs) and op.inputs[w] is not None:
                    weights.append(op.inputs[w])
                if b < len(op.inputs) and op.inputs[b] is not None:
                    biases.append(op.inputs[b])
        for t in biases:
            if t.dtype == TensorType.INT32:
                compat.drop_quantization(t)
        for t in weights:
            q = t.quantization
            if q is not None and isinstance(q.zero_points, list) and not any(q.zero_points):
                q.zero_points = [0]
        named = {id(t) for t in decoded + list(sg.inputs) + list(sg.outputs)}
        for t in sg.tensors:
            if id(t) not in named:
                compat.drop_name(t)
    return _aligned(bytes(model.build()))


def _one_scale(tensor) -> None:
    """Per-channel scales that are all equal become one per-tensor scale."""
    q = tensor.quantization
    if q is None or isinstance(q.scales, (int, float)) or len(q.scales) < 2:
        return
    if len(set(np.float32(q.scales).tolist())) == 1 and not any(np.atleast_1d(q.zero_points)):
        q.scales, q.zero_points, q.axis = [float(q.scales[0])], [0], 0


def pack(full_int8: bytes, tensors) -> bytes:
    """Packs int8 weight tensors of a `full_int8` file into value tables.

    Args:
        full_int8: The `full_int8` file.
        tensors: Indices of the int8 weight tensors to pack.

    Returns:
        The packed file (TFLM only), overhead stripped.

    Raises:
        PackedFileError: A tensor with more than 128 distinct values, or a
            tensor that is not a constant int8 tensor.
    """
    model = model_editor.read(full_int8)
    specs = []
    for t in sorted(set(tensors)):
        tensor = model.subgraphs[0].tensors[t]
        if tensor.dtype != TensorType.INT8 or tensor.array is None:
            raise PackedFileError(
                f"Tensor {t} ({tensor.name!r}) is not a constant int8 tensor; only int8 weights "
                "are packed."
            )
        q = tensor.quantization
        per_channel = q is not None and not isinstance(q.scales, (int, float)) and len(q.scales) > 1
        choice = choose_tables(tensor.array, (q.axis or 0) if per_channel else None)
        mode = spec.PerTensor() if choice.axis is None else spec.PerChannel(axis=choice.axis)
        specs.append(spec.Tensor(0, t, [spec.LookUpTableCompression(choice.bits, mode)]))
    # The compressor warns about tiny tensors that grow and prints to stderr.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        packed = bytes(compress(full_int8, specs))
    return strip_overhead(packed)


@dataclasses.dataclass
class TflmComparison:
    """A packed file against its `full_int8` file on TFLM, measured."""

    samples: int
    max_lsb: int  # largest output difference, int8 steps (0: identical)
    arena_bytes: int
    full_int8_arena_bytes: int
    latency_s: float  # median seconds per inference
    full_int8_latency_s: float

    @property
    def identical(self) -> bool:
        return self.max_lsb == 0


def compare_on_tflm(
    packed_bytes: bytes, full_int8: bytes, inputs: list[np.ndarray]
) -> TflmComparison:
    """Runs both files on TFLM: outputs on every sample, arena, latency.

    Args:
        packed_bytes: The packed file.
        full_int8: The `full_int8` file it was packed from.
        inputs: Float sample inputs, one array per model input.
    """
    # TFLM runs in the child process that every TFLM run uses (it can abort).
    (row,) = isolation.run_in_child(
        "tflm_compare", packed_bytes, inputs, reference=full_int8, raw=True
    )
    samples, max_lsb, arena, full_arena, latency, full_latency = row.tolist()
    return TflmComparison(
        samples=int(samples),
        max_lsb=int(max_lsb),
        arena_bytes=int(arena),
        full_int8_arena_bytes=int(full_arena),
        latency_s=float(latency),
        full_int8_latency_s=float(full_latency),
    )
