"""A TFLM project generated from an exported file, checked against it.

`export(..., tflm_project="board/")` (`--tflm-project board/`) writes, next to
a `full_int8` or `tflm_packed` file:

- `model_data.cc` / `model_data.h`: the file's bytes as a 16-byte aligned C
  array, `model_data`, with its length `model_data_len`;
- `model_ops.h`: a `tflite::MicroMutableOpResolver<kOperatorCount>` and the
  `AddXxx()` call of each distinct operator the file holds, read from its
  flatbuffer (`AddDecode()` for the `DECODE` operators of a packed file);
- `model_settings.h`: the tensor arena (TFLM's measured arena plus a
  margin), the input's and output's shapes, types, scales and zero points,
  the number of classes;
- `main.cc`: runs one sample input on TFLM and compares its top-1 class with
  the one TFLM's Python interpreter gave for the same file and input;
- `README.md`: how to build it, which operators CMSIS-NN accelerates, what
  the arena and flash figures mean.

Everything is computed before anything is written; the folder is then
written whole (a new folder appears in one rename; in an existing folder each
file is replaced whole).

The checks of the request (`check_request`) import nothing heavy: the
command line runs them before TensorFlow loads. Building a project runs TFLM
in a child process (`runners.run_tflm`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import secrets
import shutil
import textwrap

import numpy as np

from tflite_export import files
from tflite_export.errors import ExportError

#: Formats a project is generated for: full-integer files TFLM runs.
TFLM_FORMATS = ("full_int8", "tflm_packed")
#: The files of a project, in the order a reader meets them.
FILES = (
    "README.md",
    "main.cc",
    "model_ops.h",
    "model_settings.h",
    "model_data.h",
    "model_data.cc",
)
#: The arena written to `model_settings.h` is TFLM's measured arena plus this
#: share of it, and at least `ARENA_MARGIN_MIN_BYTES`, rounded up to
#: `ARENA_ALIGN`: optimized kernels (CMSIS-NN) ask for scratch buffers that
#: the reference kernels measured here do not.
ARENA_MARGIN_SHARE = 0.25
ARENA_MARGIN_MIN_BYTES = 1024
ARENA_ALIGN = 16
#: `main.cc` takes the sample, among this many first inputs, whose top-1
#: class leads the runner-up by the most int8 steps.
SAMPLE_CANDIDATES = 16

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
#: TFLite tensor types a project reads and writes: C type, TfLiteType, the
#: `TfLiteTensor::data` member.
C_TYPES = {
    "INT8": ("int8_t", "kTfLiteInt8", "int8"),
    "UINT8": ("uint8_t", "kTfLiteUInt8", "uint8"),
    "INT16": ("int16_t", "kTfLiteInt16", "i16"),
    "INT32": ("int32_t", "kTfLiteInt32", "i32"),
    "FLOAT32": ("float", "kTfLiteFloat32", "f"),
}
_NUMPY_TYPES = {
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "INT32": np.int32,
    "FLOAT32": np.float32,
}


def check_request(fmt, target, path, cli: bool = False) -> pathlib.Path:
    """A project folder asked for: a TFLM file's format and target, and a
    folder that can be made or written. Imports nothing heavy.

    Args:
        fmt: The export's format.
        target: The export's target.
        path: The project folder (made when missing).
        cli: Name the command line's flags in messages instead of `export`'s
            arguments. Defaults to `False`.

    Returns:
        The folder's path.

    Raises:
        ExportError: Naming the argument, what it received and what is accepted.

    Example:

    >>> check_request("int8", "tflm", "board")
    Traceback (most recent call last):
    ...
    tflite_export.errors.ExportError: `tflm_project` needs a full-integer file for TFLM: format='full_int8' or 'tflm_packed', with target='tflm'. Received: format='int8', target='tflm', tflm_project='board'
    """
    p = pathlib.Path(os.fspath(path))
    name = "--tflm-project" if cli else "tflm_project"
    if fmt not in TFLM_FORMATS or target != "tflm":
        if cli:
            wanted = "--format full_int8 or tflm_packed, with --target tflm"
            got = f"--format {fmt} --target {target} --tflm-project {str(p)}"
        else:
            wanted = "format='full_int8' or 'tflm_packed', with target='tflm'"
            got = f"format={fmt!r}, target={target!r}, tflm_project={str(p)!r}"
        why = (
            f" (target {target!r} verifies the file on LiteRT only; the project runs it on TFLM)"
            if fmt in TFLM_FORMATS
            else ""
        )
        raise ExportError(
            f"`{name}` needs a full-integer file for TFLM: {wanted}{why}. Received: {got}"
        )
    if p.exists() and not p.is_dir():
        raise ExportError(
            f"`{name}` is a file; it must be a folder (made when missing) for the project's "
            f"files. Received: {name}={str(p)!r}"
        )
    folder = p if p.exists() else next((q for q in p.parents if q.exists()), pathlib.Path("."))
    if not folder.is_dir():
        raise ExportError(
            f"`{name}` is inside {str(folder)!r}, which is a file. Received: {name}={str(p)!r}"
        )
    if not os.access(folder, os.W_OK):
        raise ExportError(
            f"Cannot write the project: the folder {str(folder)!r} is not writable. "
            f"Received: {name}={str(p)!r}"
        )
    return p


def arena_size(measured: int) -> int:
    """The arena `model_settings.h` asks for: `measured` plus
    `ARENA_MARGIN_SHARE` of it (at least `ARENA_MARGIN_MIN_BYTES`), rounded
    up to `ARENA_ALIGN` bytes.

    Example:

    >>> arena_size(2160), arena_size(11296)
    (3184, 14128)
    """
    margin = max(ARENA_MARGIN_MIN_BYTES, math.ceil(ARENA_MARGIN_SHARE * measured))
    return -(-(measured + margin) // ARENA_ALIGN) * ARENA_ALIGN


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


def resolver_method(name: str, custom: bool = False) -> str:
    """The `MicroMutableOpResolver` method registering an operator.

    Raises:
        ExportError: For an operator this table does not know.

    Example:

    >>> resolver_method("CONV_2D"), resolver_method("TFLM_DECODE", custom=True)
    ('AddConv2D', 'AddDecode')
    >>> resolver_method("PADV2"), resolver_method("UNIDIRECTIONAL_SEQUENCE_LSTM")
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
    from tflite_micro.tensorflow.lite.micro.python.schema_py_generated import (  # noqa: PLC0415 - loads with a project, not with the command line's checks
        BuiltinOperator,
    )

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
        out.append(Operator(name, resolver_method(name, custom), custom))
    return out


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """An input or output tensor as `model_settings.h` describes it."""

    name: str
    type: str  # TFLite type name: INT8, FLOAT32, ...
    shape: tuple[int, ...]
    scale: float | None
    zero_point: int | None

    @property
    def size(self) -> int:
        """Elements of one sample."""
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def c_type(self) -> str:
        return C_TYPES[self.type][0]


def _tensor_info(model, index: int, what: str) -> TensorInfo:
    from tflite_micro.tensorflow.lite.micro.python.schema_py_generated import (  # noqa: PLC0415 - loads with a project, not with the command line's checks
        TensorType,
    )

    t = model.subgraphs[0].tensors[index]
    type_name = {v: k for k, v in vars(TensorType).items() if not k.startswith("_")}.get(t.type)
    if type_name not in C_TYPES:
        raise ExportError(
            f"The file's {what} is of type {type_name or t.type}; a TFLM project is written for "
            f"{', '.join(C_TYPES)} tensors; nothing was written. Export without `tflm_project` "
            f"(--tflm-project). Received: {what} type={type_name or t.type}"
        )
    q = t.quantization
    scaled = q is not None and q.scale is not None and len(q.scale) > 0
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return TensorInfo(
        name=name,
        type=type_name,
        shape=tuple(int(s) for s in t.shape),
        scale=float(np.float32(q.scale[0])) if scaled else None,
        zero_point=int(q.zeroPoint[0]) if scaled and q.zeroPoint is not None else None,
    )


def quantize_sample(info: TensorInfo, x) -> np.ndarray:
    """One float sample as the input tensor takes it: `round(x / scale) +
    zero_point`, clipped to the type's range, for a quantized integer input.

    Example:

    >>> info = TensorInfo("x", "INT8", (1, 3), 0.5, -1)
    >>> quantize_sample(info, np.array([[0.2, 100.0, -100.0]])).tolist()
    [[-1, 127, -128]]
    """
    dtype = _NUMPY_TYPES[info.type]
    x = np.asarray(x)
    if np.dtype(dtype).kind in "iu" and info.scale and x.dtype.kind == "f":
        limits = np.iinfo(dtype)
        x = np.clip(np.round(x / info.scale + (info.zero_point or 0)), limits.min, limits.max)
    return x.astype(dtype).reshape(info.shape)


@dataclasses.dataclass
class Project:
    """A generated project, in memory: its files' text and the figures in them."""

    files: dict[str, str]
    operators: list[Operator]
    measured_arena_bytes: int
    arena_bytes: int
    sample_index: int
    expected_top1: int

    def summary(self) -> str:
        """One line for the report."""
        calls = ", ".join(f"{o.method}()" for o in self.operators)
        return (
            f"the TFLM project: MicroMutableOpResolver<{len(self.operators)}> with {calls}; "
            f"kTensorArenaSize {self.arena_bytes:,} bytes (measured {self.measured_arena_bytes:,} "
            f"+ margin); main.cc expects top-1 class {self.expected_top1} for sample "
            f"{self.sample_index} (TFLM's Python interpreter)"
        )


def _pick_sample(data: bytes, xs: np.ndarray) -> tuple[int, int]:
    """`(index, top-1 class)` of the sample whose top-1 leads by the most on TFLM."""
    from tflite_export import runners  # noqa: PLC0415 - the interpreters load with a project

    out = runners.run_tflm(data, [xs])[0]
    flat = out.reshape(len(xs), -1).astype(np.float64)
    top1 = np.argmax(flat, axis=1)
    ordered = np.sort(flat, axis=1)
    lead = ordered[:, -1] - (ordered[:, -2] if flat.shape[1] > 1 else ordered[:, -1])
    best = int(np.argmax(lead))  # the first of equal leads
    return best, int(top1[best])


def build(
    data: bytes,
    inputs: list[np.ndarray],
    fmt: str,
    measured_arena: int | None = None,
    source: str = "representative_data",
    tflite_name: str = "model.tflite",
) -> Project:
    """Generates the project of a TFLM file, in memory; runs TFLM (a child process).

    Args:
        data: The file's bytes.
        inputs: Float samples, one array `(N, ...)` per model input; one of
            the first `SAMPLE_CANDIDATES` goes into `main.cc`.
        fmt: The file's format (`full_int8`, `tflm_packed`), for the text.
        measured_arena: TFLM's arena for the file, bytes, when already
            measured (`Report.tflm`, `Report.budget`); measured here when
            `None`. Defaults to `None`.
        source: Where `inputs` came from, for the text. Defaults to
            `"representative_data"`.
        tflite_name: The file's name, for the text. Defaults to `"model.tflite"`.

    Returns:
        A `Project`.

    Raises:
        ExportError: A file with more than one input or output, a tensor
            type or operator the project cannot name, or TFLM failing on it.
    """
    from tflite_export import micro, packed, reading  # noqa: PLC0415 - the interpreters load with a project

    model = reading.read_model(data)
    sg = model.subgraphs[0]
    n_in, n_out = len(sg.inputs), len(sg.outputs)
    if n_in != 1 or n_out != 1:
        raise ExportError(
            "A TFLM project is written for a model with one input and one output (main.cc "
            "fills one input and reads one output); nothing was written. Export without "
            "`tflm_project` (--tflm-project) and write the C++ around the file by hand "
            f"(`c_array`). Received: {n_in} inputs, {n_out} outputs"
        )
    ops = operators(model)
    x_info = _tensor_info(model, int(sg.inputs[0]), "input")
    y_info = _tensor_info(model, int(sg.outputs[0]), "output")
    candidates = np.asarray(inputs[0])[:SAMPLE_CANDIDATES]
    xs = np.stack([quantize_sample(x_info, x[None]) for x in candidates]).reshape(
        (len(candidates), *x_info.shape[1:])
    )
    index, top1 = _pick_sample(data, xs)
    if measured_arena is None:
        measured_arena = packed.compare_on_tflm(data, data, [candidates[:1]]).arena_bytes
    arena = arena_size(int(measured_arena))
    sample = xs[index]
    texts = {
        "model_data.cc": micro.c_source(data, "model_data", "model_data.h"),
        "model_data.h": micro.c_header("model_data", "MODEL_DATA_H_"),
        "model_ops.h": _ops_header(ops, tflite_name, fmt),
        "model_settings.h": _settings_header(
            x_info, y_info, arena, int(measured_arena), len(data), tflite_name, fmt
        ),
        "main.cc": _main_cc(x_info, y_info, sample, index, top1, source, tflite_name, fmt),
    }
    project = Project(
        files={},
        operators=ops,
        measured_arena_bytes=int(measured_arena),
        arena_bytes=arena,
        sample_index=index,
        expected_top1=top1,
    )
    texts["README.md"] = _readme(project, x_info, y_info, len(data), tflite_name, fmt)
    project.files = {name: texts[name] for name in FILES}
    return project


def write(project: Project, path) -> str:
    """Writes the project's files into the folder `path`, whole or not at all.

    A missing folder appears in one rename of a folder written beside it; in
    an existing folder each file is replaced whole (other files are left as
    they are).

    Returns:
        The folder's path.

    Raises:
        OSError: When the folder cannot be written; nothing is left behind then.
    """
    target = pathlib.Path(os.fspath(path))
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name or 'tflm_project'}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for name, text in project.files.items():
            files.atomic_write(tmp / name, text.encode())
        if target.exists():
            for name in project.files:
                os.replace(tmp / name, target / name)
            tmp.rmdir()
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def _comment(text: str, width: int = 88) -> list[str]:
    """`text` as `//` comment lines of at most `width` characters."""
    return [f"// {line}" for line in textwrap.wrap(text, width - 3)]


def _c_number(value, type_name: str) -> str:
    if type_name == "FLOAT32":
        return f"{float(value):.9g}f"
    return str(int(value))


def _c_values(values, type_name: str, per_line: int = 16) -> list[str]:
    flat = [_c_number(v, type_name) for v in np.asarray(values).reshape(-1)]
    return ["    " + ", ".join(flat[i : i + per_line]) + "," for i in range(0, len(flat), per_line)]


def _ops_header(ops: list[Operator], tflite_name: str, fmt: str) -> str:
    lines = [
        f"// Generated by tflite-export from {tflite_name} ({fmt}): the operators the file",
        "// uses, read from its flatbuffer, one MicroMutableOpResolver call each.",
        "#ifndef MODEL_OPS_H_",
        "#define MODEL_OPS_H_",
        "",
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
        "",
        "// Distinct operators of the file.",
        f"constexpr int kOperatorCount = {len(ops)};",
        "using ModelOpResolver = tflite::MicroMutableOpResolver<kOperatorCount>;",
        "",
        "// Registers exactly the file's operators; kTfLiteError if one cannot be added.",
        "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {",
    ]
    for o in ops:
        if o.name == "TFLM_DECODE":
            note = "TFLM_DECODE (custom): expands packed weights into the arena"
        elif o.custom:
            note = f"{o.name} (custom)"
        else:
            note = o.name + (" (CMSIS-NN kernel)" if o.cmsis_nn else "")
        lines.append(f"  // {note}")
        lines.append(f"  if (resolver.{o.method}() != kTfLiteOk) return kTfLiteError;")
    lines += ["  return kTfLiteOk;", "}", "", "#endif  // MODEL_OPS_H_", ""]
    return "\n".join(lines)


def _tensor_lines(prefix: str, info: TensorInfo) -> list[str]:
    dims = ", ".join(str(d) for d in info.shape)
    lines = [
        f"// {prefix.lower()} tensor {info.name!r}: {info.type.lower()}, shape [{dims}]",
        f"constexpr int k{prefix}Dims[] = {{{dims}}};",
        f"constexpr int k{prefix}DimCount = {len(info.shape)};",
        f"constexpr int k{prefix}Size = {info.size};  // elements of one sample",
    ]
    if info.scale is not None:
        lines += [
            f"// real value = (q - k{prefix}ZeroPoint) * k{prefix}Scale",
            f"constexpr float k{prefix}Scale = {info.scale:.9g}f;",
            f"constexpr int k{prefix}ZeroPoint = {info.zero_point or 0};",
        ]
    return lines


def _settings_header(x_info, y_info, arena, measured, n_bytes, tflite_name, fmt) -> str:
    margin = max(ARENA_MARGIN_MIN_BYTES, math.ceil(ARENA_MARGIN_SHARE * measured))
    lines = [
        f"// Generated by tflite-export from {tflite_name} ({fmt}): what the code around the",
        "// model needs to know about it.",
        "#ifndef MODEL_SETTINGS_H_",
        "#define MODEL_SETTINGS_H_",
        "",
        "// TFLM's arena for the file, as TFLM's recording allocator measured it on the",
        f"// host: {measured:,} bytes. Asked for: that plus a margin of {margin:,} bytes",
        f"// ({ARENA_MARGIN_SHARE:.0%}, at least {ARENA_MARGIN_MIN_BYTES:,}), rounded up to "
        f"{ARENA_ALIGN}. Trim it to what",
        "// interpreter.arena_used_bytes() reports on the target.",
        f"constexpr int kMeasuredArenaBytes = {measured};",
        f"constexpr int kTensorArenaSize = {arena};",
        "",
        f"// Flash for the model: the C array model_data, {n_bytes:,} bytes.",
        f"constexpr int kModelBytes = {n_bytes};",
        "",
        *_tensor_lines("Input", x_info),
        "",
        *_tensor_lines("Output", y_info),
        "",
        "// Classes: the output's values per sample.",
        f"constexpr int kNumClasses = {y_info.size};",
        "",
        "#endif  // MODEL_SETTINGS_H_",
        "",
    ]
    return "\n".join(lines)


def _main_cc(x_info, y_info, sample, index, top1, source, tflite_name, fmt) -> str:
    ctype, tftype, member = C_TYPES[y_info.type]
    in_type = C_TYPES[x_info.type]
    quantized = x_info.scale is not None and x_info.type in ("INT8", "UINT8")
    how = (
        "quantized with the input's scale and zero point: q = round(x / kInputScale) + "
        f"kInputZeroPoint, clipped to the {x_info.type.lower()} range"
        if quantized
        else "as the input tensor takes it"
    )
    lines = [
        f"// Generated by tflite-export from {tflite_name} ({fmt}): runs the model once on",
        "// TFLM and checks its top-1 class against the one TFLM's Python interpreter gave",
        "// for the same file and input. Prints OK and returns 0 when they agree.",
        "#include <cstdint>",
        "#include <cstring>",
        "",
        '#include "model_data.h"',
        '#include "model_ops.h"',
        '#include "model_settings.h"',
        '#include "tensorflow/lite/micro/micro_interpreter.h"',
        '#include "tensorflow/lite/micro/micro_log.h"',
        '#include "tensorflow/lite/micro/system_setup.h"',
        '#include "tensorflow/lite/schema/schema_generated.h"',
        "",
        "namespace {",
        "",
        *_comment(f"Sample {index} of {source}, {how}."),
        f"const {in_type[0]} kSampleInput[kInputSize] = {{",
        *_c_values(sample, x_info.type),
        "};",
        "",
        "// The top-1 class of TFLM's Python interpreter for kSampleInput.",
        f"constexpr int kExpectedTop1 = {top1};",
        "",
        "alignas(16) uint8_t tensor_arena[kTensorArenaSize];",
        "",
        "}  // namespace",
        "",
        "int main() {",
        "  tflite::InitializeTarget();",
        "  const tflite::Model* model = tflite::GetModel(model_data);",
        "  if (model->version() != TFLITE_SCHEMA_VERSION) {",
        '    MicroPrintf("Model schema version %d, TFLM reads %d.", model->version(),',
        "                TFLITE_SCHEMA_VERSION);",
        "    return 1;",
        "  }",
        "  static ModelOpResolver resolver;",
        "  if (RegisterModelOps(resolver) != kTfLiteOk) {",
        '    MicroPrintf("Registering the model\'s operators failed.");',
        "    return 1;",
        "  }",
        "  tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize);",
        "  if (interpreter.AllocateTensors() != kTfLiteOk) {",
        '    MicroPrintf("AllocateTensors() failed (kTensorArenaSize %d bytes).", kTensorArenaSize);',
        "    return 1;",
        "  }",
        "  TfLiteTensor* input = interpreter.input(0);",
        f"  if (input->type != {in_type[1]} || input->bytes != sizeof(kSampleInput)) {{",
        '    MicroPrintf("The input tensor is not the one model_settings.h describes.");',
        "    return 1;",
        "  }",
        "  std::memcpy(input->data.raw, kSampleInput, sizeof(kSampleInput));",
        "  if (interpreter.Invoke() != kTfLiteOk) {",
        '    MicroPrintf("Invoke() failed.");',
        "    return 1;",
        "  }",
        "  const TfLiteTensor* output = interpreter.output(0);",
        f"  if (output->type != {tftype}) {{",
        '    MicroPrintf("The output tensor is not the one model_settings.h describes.");',
        "    return 1;",
        "  }",
        f"  const {ctype}* scores = output->data.{member};",
        "  int top1 = 0;",
        "  for (int k = 1; k < kNumClasses; ++k) {",
        "    if (scores[k] > scores[top1]) top1 = k;",
        "  }",
        '  MicroPrintf("top-1 class %d, expected %d; arena used %d of %d bytes", top1,',
        "              kExpectedTop1, static_cast<int>(interpreter.arena_used_bytes()),",
        "              kTensorArenaSize);",
        "  if (top1 != kExpectedTop1) {",
        '    MicroPrintf("MISMATCH");',
        "    return 1;",
        "  }",
        '  MicroPrintf("OK");',
        "  return 0;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _readme(project: Project, x_info, y_info, n_bytes, tflite_name, fmt) -> str:
    ops = project.operators
    fast = [o.name for o in ops if o.cmsis_nn]
    slow = [o.name for o in ops if not o.cmsis_nn]
    decode = any(o.name == "TFLM_DECODE" for o in ops)
    x_dims = "x".join(str(d) for d in x_info.shape)
    y_dims = "x".join(str(d) for d in y_info.shape)
    margin = project.arena_bytes - project.measured_arena_bytes
    lines = [
        f"# TFLM project for `{tflite_name}` ({fmt})",
        "",
        *textwrap.wrap(
            f"Generated by `tflite-export` from the file it wrote and checked. `main.cc` runs "
            f"sample {project.sample_index} of the export's inputs on TFLM and compares its "
            f"top-1 class with {project.expected_top1}, the class TFLM's Python interpreter gave "
            "for this file and this input; it prints `OK` and returns 0 when they agree.",
            78,
        ),
        "",
        "| file | holds |",
        "|---|---|",
        f"| `model_data.cc`, `model_data.h` | the file's {n_bytes:,} bytes as "
        "`alignas(16) model_data[]`, length `model_data_len` |",
        f"| `model_ops.h` | `ModelOpResolver` (`tflite::MicroMutableOpResolver<{len(ops)}>`) "
        "and `RegisterModelOps()` |",
        f"| `model_settings.h` | `kTensorArenaSize`; the input ({x_dims}, "
        f"{x_info.type.lower()}) and output ({y_dims}, {y_info.type.lower()}): shapes, "
        "scales, zero points; `kNumClasses` |",
        "| `main.cc` | one inference on a fixed sample, checked against the expected top-1 class |",
        "",
        "## Operators",
        "",
        "| operator | registered with | CMSIS-NN kernel |",
        "|---|---|---|",
        *(
            f"| `{o.name}` | `resolver.{o.method}()` | {'yes' if o.cmsis_nn else 'no'} |"
            for o in ops
        ),
        "",
        *textwrap.wrap(
            f"Built with `OPTIMIZED_KERNEL_DIR=cmsis_nn`, {', '.join(fast) or 'none of them'} "
            f"{'runs' if len(fast) == 1 else 'run'} CMSIS-NN's kernels (Arm Cortex-M); "
            f"{', '.join(slow) or 'none'} {'runs' if len(slow) == 1 else 'run'} TFLM's "
            "reference kernels.",
            78,
        ),
    ]
    if decode:
        lines += [
            "",
            *textwrap.wrap(
                "`TFLM_DECODE` is the `DECODE` operator of a `tflm_packed` file: it expands "
                "each packed weight into the arena right before the layer that reads it. "
                'Without `resolver.AddDecode()`, `AllocateTensors()` fails with "Failed to '
                "get registration from op code CUSTOM\". It is one of TFLM's kernels: no build "
                "flag is needed for it (`USE_TFLM_COMPRESSION` switches TFLM's older in-kernel "
                "decompression, not `DECODE`).",
                78,
            ),
        ]
    lines += [
        "",
        "## Arena and flash",
        "",
        *textwrap.wrap(
            f"- RAM: `kTensorArenaSize` = {project.arena_bytes:,} bytes: the arena TFLM's "
            f"recording allocator measured for this file on the host, "
            f"{project.measured_arena_bytes:,} bytes, plus a margin of {margin:,} bytes "
            f"({ARENA_MARGIN_SHARE:.0%} of it, at least {ARENA_MARGIN_MIN_BYTES:,} bytes, "
            f"rounded up to {ARENA_ALIGN}). The arena holds the activations"
            + (", the decoded weights of the layer that runs" if decode else "")
            + " and TFLM's own records; optimized kernels may ask for scratch buffers that "
            "the reference kernels measured here do not. `main.cc` prints "
            "`interpreter.arena_used_bytes()`: trim `kTensorArenaSize` to it plus what your "
            "target needs.",
            78,
            subsequent_indent="  ",
        ),
        *textwrap.wrap(
            f"- Flash: the model is `model_data_len` = {n_bytes:,} bytes (`kModelBytes`), read "
            f"in place. TFLM's code (the interpreter and the {len(ops)} registered kernels) "
            "comes on top; it depends on the target and the compiler and is not measured here.",
            78,
            subsequent_indent="  ",
        ),
        "",
        "## Building",
        "",
        "From a checkout of https://github.com/tensorflow/tflite-micro, export a TFLM source",
        "tree once (`create_tflm_tree.py` copies the sources and third-party headers a",
        "configuration needs):",
        "",
        "```bash",
        "# reference kernels, for a build on the host",
        "python3 tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py /tmp/tflm-tree",
        "# Cortex-M4 with CMSIS-NN kernels",
        "python3 tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \\",
        '    --makefile_options="TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 '
        'OPTIMIZED_KERNEL_DIR=cmsis_nn" \\',
        "    /tmp/tflm-tree-cm4",
        "```",
        "",
        "On the host, build TFLM's library with the tree's smoke-test Makefile, then this",
        "folder against it (`THIS` is this folder):",
        "",
        "```bash",
        "cp tensorflow/lite/micro/tools/project_generation/Makefile /tmp/tflm-tree/",
        "make -C /tmp/tflm-tree libtflm",
        "cd /tmp/tflm-tree && c++ -std=c++17 -DTF_LITE_STATIC_MEMORY -I. -I./third_party/gemmlowp \\",
        "    -I./third_party/flatbuffers/include -I./third_party/kissfft -I./third_party/ruy \\",
        '    "$THIS"/*.cc gen/libtflm.a -o gen/model_check && ./gen/model_check',
        "```",
        "",
        *textwrap.wrap(
            "For a board, compile `model_data.cc` and `main.cc` (or your code calling "
            "`RegisterModelOps()`) with the Cortex-M tree's sources, `-DTF_LITE_STATIC_MEMORY` "
            "and the same include folders, in your board's build. Within a TFLM checkout, "
            "`make -f tensorflow/lite/micro/tools/make/Makefile TARGET=cortex_m_generic "
            "TARGET_ARCH=cortex-m4 OPTIMIZED_KERNEL_DIR=cmsis_nn microlite` builds the library "
            "(`libtensorflow-microlite.a`) for that configuration.",
            78,
        ),
        "",
    ]
    return "\n".join(lines)
