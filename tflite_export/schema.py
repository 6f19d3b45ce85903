"""The TFLite schema numbers this package reads and writes, by name."""

from __future__ import annotations

from tensorflow.lite.python.schema_py_generated import BuiltinOperator, TensorMapT, TensorType

__all__ = [
    "BIAS_INPUT",
    "BuiltinOperator",
    "INTEGER_TYPES",
    "OUTPUT_CHANNEL_DIM",
    "QMAX",
    "STORAGE_NAMES",
    "TensorMapT",
    "TensorType",
    "WEIGHT_INPUT",
    "WEIGHT_NAME",
    "storage_name",
    "weight_label",
]

#: Operators with a constant weight input, and that input's index
#: (None: whichever input is constant, as for MUL).
WEIGHT_INPUT = {
    BuiltinOperator.FULLY_CONNECTED: 1,
    BuiltinOperator.CONV_2D: 1,
    BuiltinOperator.DEPTHWISE_CONV_2D: 1,
    BuiltinOperator.TRANSPOSE_CONV: 1,
    BuiltinOperator.CONV_3D: 1,
    BuiltinOperator.CONV_3D_TRANSPOSE: 1,  # inputs: output shape, filter, input
    BuiltinOperator.GATHER: 0,  # the params
    BuiltinOperator.EMBEDDING_LOOKUP: 1,
    BuiltinOperator.MUL: None,
}

#: The Keras weight that each operator's constant weight input holds.
WEIGHT_NAME = {
    BuiltinOperator.FULLY_CONNECTED: "kernel",
    BuiltinOperator.CONV_2D: "kernel",
    BuiltinOperator.DEPTHWISE_CONV_2D: "depthwise_kernel",
    BuiltinOperator.TRANSPOSE_CONV: "kernel",
    BuiltinOperator.CONV_3D: "kernel",
    BuiltinOperator.CONV_3D_TRANSPOSE: "kernel",
    BuiltinOperator.GATHER: "embeddings",
    BuiltinOperator.EMBEDDING_LOOKUP: "embeddings",
}


def weight_label(tensor_name: str, code) -> str:
    """`layer/weight` for a weight tensor named `model/.../layer/Op` by the
    converter; the tensor name itself where it does not have that shape.

    Example:

    >>> weight_label("sequential/conv/Conv2D", BuiltinOperator.CONV_2D)
    'conv/kernel'
    >>> weight_label("model/block/d1/MatMul", BuiltinOperator.FULLY_CONNECTED)
    'block/d1/kernel'
    >>> weight_label("tfl.pseudo_qconst1", BuiltinOperator.FULLY_CONNECTED)
    'tfl.pseudo_qconst1'
    """
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    weight = WEIGHT_NAME.get(code)
    if weight is None or len(parts) < 3:
        return tensor_name
    return "/".join([*parts[1:-1], weight])


#: The input index of the int32 bias of the operators that have one.
BIAS_INPUT = {
    BuiltinOperator.FULLY_CONNECTED: 2,
    BuiltinOperator.CONV_2D: 2,
    BuiltinOperator.DEPTHWISE_CONV_2D: 2,
    BuiltinOperator.TRANSPOSE_CONV: 3,
    BuiltinOperator.CONV_3D: 2,
}

#: The output-channel dimension of a weight stored with one scale, where it
#: is not the first (depthwise filters are `[1, h, w, channels]`, 3-D
#: convolution filters `[d, h, w, in, out]`, transposed ones `[d, h, w, out, in]`).
OUTPUT_CHANNEL_DIM = {
    BuiltinOperator.DEPTHWISE_CONV_2D: 3,
    BuiltinOperator.CONV_3D: 4,
    BuiltinOperator.CONV_3D_TRANSPOSE: 3,
}

#: Integer weight storage types and their largest symmetric code.
QMAX = {TensorType.INT8: 127, TensorType.INT4: 7}
INTEGER_TYPES = tuple(QMAX)

STORAGE_NAMES = {
    TensorType.FLOAT32: "float32",
    TensorType.FLOAT16: "float16",
    TensorType.INT8: "int8",
    TensorType.INT4: "int4",
    TensorType.INT32: "int32",
}


def storage_name(tensor) -> str:
    """How a tensor is stored: `"int8"`, `"int4"`, `"float32"`, ...

    Example:

    >>> class T:
    ...     type = TensorType.INT4
    >>> storage_name(T())
    'int4'
    """
    return STORAGE_NAMES.get(tensor.type, f"type{tensor.type}")
