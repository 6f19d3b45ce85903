"""The `MicroMutableOpResolver` calls of a file's operators.

TFLM registers the operators a model uses with one `AddXxx()` call each on a
`tflite::MicroMutableOpResolver<N>` (TFLM's `micro_mutable_op_resolver.h`);
`operators` reads them from a file's flatbuffer, custom ones included: the
`DECODE` operator of a `tflm_packed` file (custom code `TFLM_DECODE`) is
registered with `AddDecode()`.
"""

from __future__ import annotations

import dataclasses

from tflite_micro.tensorflow.lite.micro.python.schema_py_generated import BuiltinOperator

from tflite_export.errors import ExportError

#: TFLite builtin operators and the `MicroMutableOpResolver` method that
#: registers each (TFLM's `micro_mutable_op_resolver.h`).
BUILTIN_METHODS = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MAXIMUM": "AddMaximum",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax",
    "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}
#: Custom operators (by custom code) and the method that registers each.
CUSTOM_METHODS = {
    "TFLM_DECODE": "AddDecode",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
}
#: Operators with a CMSIS-NN kernel in TFLM (`kernels/cmsis_nn/`), used
#: with `OPTIMIZED_KERNEL_DIR=cmsis_nn`; the others run TFLM's reference kernels.
CMSIS_NN_OPERATORS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "BATCH_MATMUL",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MINIMUM",
        "MUL",
        "PAD",
        "SOFTMAX",
        "SVDF",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
    }
)


@dataclasses.dataclass(frozen=True)
class Operator:
    """One distinct operator of a file and the resolver call that registers it."""

    name: str  # the builtin operator's name (CONV_2D) or the custom code (TFLM_DECODE)
    method: str  # AddConv2D, AddDecode
    custom: bool

    @property
    def cmsis_nn(self) -> bool:
        """True when TFLM has a CMSIS-NN kernel for it."""
        return not self.custom and self.name in CMSIS_NN_OPERATORS


def method_for(name: str, custom: bool = False) -> str:
    """The `MicroMutableOpResolver` method registering an operator.

    Raises:
        ExportError: For an operator this table does not know.

    Example:

    >>> method_for("CONV_2D"), method_for("TFLM_DECODE", custom=True)
    ('AddConv2D', 'AddDecode')
    >>> method_for("PADV2"), method_for("UNIDIRECTIONAL_SEQUENCE_LSTM")
    ('AddPadV2', 'AddUnidirectionalSequenceLSTM')
    """
    method = (CUSTOM_METHODS if custom else BUILTIN_METHODS).get(name)
    if method is None:
        kind = "custom operator" if custom else "operator"
        raise ExportError(
            f"The file uses the {kind} {name!r}, which has no known MicroMutableOpResolver "
            "method here, so no exact op resolver can be written for it; nothing was written. "
            "Export without `tflm_project` (--tflm-project) and register it by hand. "
            f"Received: operator={name!r}"
        )
    return method


def operators(model) -> list[Operator]:
    """The distinct operators that the file's operators use (every subgraph),
    in the order of the file's operator codes, read from its flatbuffer
    (`reading.read_model`)."""
    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    used = {int(op.opcodeIndex) for sg in model.subgraphs or [] for op in sg.operators or []}
    out, seen = [], set()
    for i, code in enumerate(model.operatorCodes or []):
        if i not in used:
            continue
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = builtin == BuiltinOperator.CUSTOM
        if custom:
            raw = code.customCode or b""
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
        else:
            name = names.get(builtin, f"BUILTIN_{builtin}")
        if name in seen:  # one code per version of the same operator
            continue
        seen.add(name)
        out.append(Operator(name, method_for(name, custom), custom))
    return out
