"""The TFLite schema numbers this package reads and writes, by name."""

from __future__ import annotations

from tensorflow.lite.python.schema_py_generated import BuiltinOperator, TensorType

__all__ = [
    "BIAS_INPUT",
    "BuiltinOperator",
    "INTEGER_TYPES",
    "OUTPUT_CHANNEL_DIM",
    "QMAX",
    "STORAGE_NAMES",
    "TensorType",
    "WEIGHT_INPUT",
    "storage_name",
]

#: Operators with a constant weight input, and that input's index
#: (None: whichever input is constant, as for MUL).
WEIGHT_INPUT = {
    BuiltinOperator.FULLY_CONNECTED: 1,
    BuiltinOperator.CONV_2D: 1,
    BuiltinOperator.DEPTHWISE_CONV_2D: 1,
    BuiltinOperator.TRANSPOSE_CONV: 1,
    BuiltinOperator.CONV_3D: 1,
    BuiltinOperator.GATHER: 0,  # the params
    BuiltinOperator.EMBEDDING_LOOKUP: 1,
    BuiltinOperator.MUL: None,
}

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
#: convolution filters `[d, h, w, in, out]`).
OUTPUT_CHANNEL_DIM = {BuiltinOperator.DEPTHWISE_CONV_2D: 3, BuiltinOperator.CONV_3D: 4}

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
