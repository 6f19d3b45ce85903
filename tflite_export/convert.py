"""Keras model -> `.tflite` bytes in each format, and model loading."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from ai_edge_quantizer import qtyping, quantizer, recipe_manager

import tfmot_discrete as td
from tflite_export import compat, exact, files, keras3, sequence
from tflite_export.compat import QuantizeLayer
from tflite_export.errors import ExportError
from tflite_export.formats import FORMATS
from tflite_export.schema import TensorMapT
from tfmot_discrete import keras
from tfmot_discrete.tfk import recurrent
from tfmot_discrete.tfk.int8 import Int8WeightQuantizer
from tfmot_discrete.tfk.layers import DiscreteMultiplier
from tfmot_discrete.tfk.quantizers import CodebookQuantizer
from tfmot_discrete.tfk.weights import wrapper_weights


def returns_freed_memory(fn):
    """Decorates a converter: once it has run, the memory it freed goes back
    to the operating system.

    The converters free most of what they allocate, but glibc keeps freed
    heap pages of every thread's arena in the process; without this, the
    export's later steps stack on top of the converter's leftovers. Does
    nothing where the C library has no `malloc_trim`.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None

    @functools.wraps(fn)
    def converted(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            if trim is not None:
                trim(0)

    return converted


def check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"`format` must be one of {list(FORMATS)}. Received: format={fmt!r}")
    return fmt


def load_model(path, safe_mode: bool = True):
    """Loads a saved (QAT or plain) model: a tf_keras one inside
    `td.quantize_scope()`, a `.keras` file written by Keras 3 as a Keras 3 model.

    Args:
        path: A `.keras` or `.h5` file, or a SavedModel directory.
        safe_mode: Keras safe mode (refuses Lambda layers' code in `.keras`).
            Defaults to `True`.

    Raises:
        ExportError: For a missing, unreadable or unloadable file.
    """
    p = files.check_model_path(path)
    kwargs = {"safe_mode": safe_mode} if p.suffix == ".keras" else {}
    try:
        if p.suffix == ".keras" and keras3.saved_with_keras3(p):
            return keras3.load(p, safe_mode=safe_mode)  # a Keras 3 model
        with td.quantize_scope():
            return keras.models.load_model(str(p), compile=False, **kwargs)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "safe_mode" in str(e) or "Lambda" in str(e):
            msg += " (the file holds code such as a Lambda layer; pass --unsafe to trust it)"
        raise ExportError(f"Cannot load model {str(p)!r}: {msg}") from e


@contextlib.contextmanager
def quiet():
    """Keeps the converter's Python `print`s (to `sys.stdout`) out of sight.

    Its C++ code writes to file descriptors 1 and 2 directly, which this does
    not catch; `logs.library_logs` (around every `export`) does.
    """
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def in_keras_order(model_bytes: bytes, model) -> bytes:
    """`model_bytes` with the file's inputs and outputs in `model`'s order.

    The converter lists a file's inputs and outputs in an order of its own
    (neither the Keras model's nor by name); its signature names each one after
    the Keras input or output. Reordering the subgraph's lists by those names
    makes input (output) `i` of the file the Keras model's input (output) `i`
    for every interpreter and caller. A file of one input and one output, or
    whose signature does not name every input and output, comes back as it is.

    Args:
        model_bytes: A `.tflite` file converted from `model`.
        model: The tf_keras model it was converted from.

    Returns:
        The file, reordered.
    """
    wanted = (list(model.input_names), list(model.output_names))
    if len(wanted[0]) < 2 and len(wanted[1]) < 2:
        return model_bytes
    fb = exact.read(model_bytes)
    if not fb.signatureDefs:
        return model_bytes
    sig = fb.signatureDefs[0]
    sg = fb.subgraphs[sig.subgraphIndex or 0]
    order = []
    for names, maps, listed in (
        (wanted[0], sig.inputs, sg.inputs),
        (wanted[1], sig.outputs, sg.outputs),
    ):
        index = {_name(m.name): int(m.tensorIndex) for m in maps or []}
        tensors = [index.get(n) for n in names]
        if None in tensors or sorted(tensors) != sorted(int(t) for t in listed):
            return model_bytes
        order.append(tensors)
    if [list(map(int, sg.inputs)), list(map(int, sg.outputs))] == order:
        return model_bytes
    sg.inputs, sg.outputs = np.asarray(order[0], np.int32), np.asarray(order[1], np.int32)
    return exact.write(fb)


@returns_freed_memory
def float_tflite(plain) -> bytes:
    """float32 weights and activations."""
    conv = tf.lite.TFLiteConverter.from_keras_model(plain)
    compat.keep_input_multiplications(conv)
    with quiet():
        return in_keras_order(bytes(conv.convert()), plain)


def _unread_outputs(subgraph) -> list[int]:
    """Tensors that an operator of `subgraph` writes and nothing reads (no
    operator, not the graph's outputs)."""
    ops = subgraph.operators or []
    read = {int(t) for op in ops if op.inputs is not None for t in op.inputs}
    read.update(int(t) for t in subgraph.outputs)
    written = [int(t) for op in ops if op.outputs is not None for t in op.outputs]
    return [t for t in written if t >= 0 and t not in read]


def _main_signatures(model) -> list:
    return [s for s in model.signatureDefs or [] if (s.subgraphIndex or 0) == 0]


def _quantized_with_every_output_read(quantize, model: bytes) -> bytes:
    """`quantize(model)` with each unread operator output listed as an output
    of the graph (and of its signature) while the quantizer runs, then taken
    off those lists again: the tensor stays, written by its operator and read
    by nothing."""
    fb = exact.read(model)
    sg = fb.subgraphs[0]
    unread = _unread_outputs(sg)
    if not unread:
        return quantize(model)
    tensor_names = {sg.tensors[t].name for t in unread}
    # A signature must name every output, or the quantizer drops it.
    keys = [f"tflite_export_unread_{i}".encode() for i in range(len(unread))]
    sg.outputs = np.concatenate([np.asarray(sg.outputs, np.int32), np.asarray(unread, np.int32)])
    signatures = _main_signatures(fb)
    for sig in signatures:
        sig.outputs = list(sig.outputs or []) + [
            TensorMapT(name=k, tensorIndex=t) for k, t in zip(keys, unread)
        ]
    quantized = exact.read(bytes(quantize(exact.write(fb))))
    del fb
    qsg = quantized.subgraphs[0]
    kept = [int(t) for t in qsg.outputs if qsg.tensors[t].name not in tensor_names]
    found = len(kept) == len(qsg.outputs) - len(unread)
    found = found and len(_main_signatures(quantized)) == len(signatures)
    for sig in _main_signatures(quantized):
        outputs = [m for m in sig.outputs or [] if m.name not in keys]
        found = found and len(outputs) == len(sig.outputs or []) - len(unread)
        sig.outputs = outputs
    if not found:
        return quantize(model)  # the listed outputs are not found again: as the converter does
    qsg.outputs = np.asarray(kept, np.int32)
    return exact.write(quantized)


def quantized_deterministically(converter) -> None:
    """Makes a calibrating `TFLiteConverter` write the same file every time.

    Its MLIR quantizer treats an operator with an output that nothing reads
    differently from one run to the next, in one process or in fresh ones:
    about half the time it leaves the operator in float32 between a
    DEQUANTIZE and QUANTIZEs (an unrolled LSTM's first step always splits off
    a forget gate that multiplies the zero initial cell state; so does a
    GRU's reset gate while its recurrent bias is zero). With every output
    read, its result is the same each time; listing those outputs as graph
    outputs while it runs does that without changing what the file computes.
    """
    compat.wrap_quantization(converter, _quantized_with_every_output_read)


@returns_freed_memory
def full_int8_tflite(plain, representative) -> bytes:
    """int8 weights and activations, int8 input and output (for microcontrollers)."""

    # Integer inputs (token ids of an Embedding) keep their integer type.
    dtypes = [t.dtype.as_numpy_dtype for t in plain.inputs]
    names = list(plain.input_names)

    def gen():
        for sample in representative:
            arrays = [np.asarray(s, dtype=d)[None] for s, d in zip(sample, dtypes)]
            # Several inputs go by name: the converter's own input order is not the model's.
            yield dict(zip(names, arrays)) if len(arrays) > 1 else arrays

    conv = tf.lite.TFLiteConverter.from_keras_model(plain)
    compat.keep_input_multiplications(conv)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    quantized_deterministically(conv)
    with quiet():
        return in_keras_order(bytes(conv.convert()), plain)


@returns_freed_memory
def weight_only_tflite(float_bytes: bytes, bits: int) -> bytes:
    """Weight-only per-channel int8 or int4 through ai-edge-quantizer.

    Its int4 policy leaves DEPTHWISE_CONV_2D and TRANSPOSE_CONV in float32;
    those get int8 weights instead, the narrowest it can store for them.
    """
    op = qtyping.TFLOperationName
    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=op.ALL_SUPPORTED, num_bits=bits)
    if bits == 4:
        for name in (op.DEPTHWISE_CONV_2D, op.CONV_2D_TRANSPOSE):
            rm.add_weight_only_config(regex=".*", operation_name=name, num_bits=8)
    q = quantizer.Quantizer(float_bytes)
    q.load_quantization_recipe(rm.get_quantization_recipe())
    # Its tqdm progress bars write to `sys.stderr` on models of 100 or more
    # operators, and one of them (applying the transformations) has no switch.
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


class _Identity(tfmot.quantization.keras.quantizers.Quantizer):
    """Stands in for a weight quantizer once its weight holds projected values."""

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return inputs

    def get_config(self):
        return {}


def has_activation_quantizers(model) -> bool:
    """True for a QAT model from `quantize_model(..., activations="int8")`."""
    return any(isinstance(layer, QuantizeLayer) for layer in model.layers)


def baked_qat_copy(qat, batch_of_one=False):
    """A copy of a QAT model whose weights hold their projected (or 8-bit
    fake-quantized) values and whose activation fake-quant (with the ranges
    learned in training) is kept; `batch_of_one`: with a batch of one."""
    with td.quantize_scope():
        inputs = sequence.batch_of_one(qat) if batch_of_one else None
        copy = keras.models.clone_model(qat, input_tensors=inputs)
    copy.set_weights(qat.get_weights())
    for layer in copy.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            baked = []
            for weight, wq, qvars in wrapper_weights(layer):
                # 8-bit weights too: the converter cannot keep a per-channel fake
                # quant through the transpose of a Dense kernel, and the export
                # writes the trained integers back anyway.
                if isinstance(wq, CodebookQuantizer | Int8WeightQuantizer):
                    weight.assign(wq(weight, False, weights=qvars))
                    wq, qvars = _Identity(), {}
                baked.append((weight, wq, qvars))
            compat.set_weight_vars(layer, baked)
        elif isinstance(layer, DiscreteMultiplier):
            folded = layer.folded_quantizer()
            layer.kernel.assign(layer.quantized_kernel(False))
            layer.quantizer = folded
    return copy


@returns_freed_memory
def full_int8_from_qat(qat) -> bytes:
    """full_int8 with the activation ranges the QAT model learned (no calibration);
    a model with 8-bit recurrent states (`Int8LSTM`, unrolled in its `call`)
    with a batch of one, as the interpreters run it."""
    baked = baked_qat_copy(qat, batch_of_one=bool(recurrent.eight_bit_state(qat)))
    conv = tf.lite.TFLiteConverter.from_keras_model(baked)
    compat.keep_input_multiplications(conv)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with quiet():
        return in_keras_order(bytes(conv.convert()), baked)
