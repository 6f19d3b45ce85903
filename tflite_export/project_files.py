"""A TFLM project's files as text, from the figures of the file (`Figures`).

`project.build` gathers the figures (the file's tensors, `tensor_info`; its
operators, `resolver`; TFLM's arena and outputs); the functions here write
them as C++ and Markdown: `model_ops.h`, `model_settings.h`, `main.cc` and
`README.md`, with `micro`'s C array.
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
from tflite_micro.tensorflow.lite.micro.python.schema_py_generated import TensorType

from tflite_export import micro
from tflite_export.errors import ExportError
from tflite_export.resolver import Operator

#: The files of a project, in the order a reader meets them.
FILES = (
    "README.md",
    "main.cc",
    "model_ops.h",
    "model_settings.h",
    "model_data.h",
    "model_data.cc",
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
NUMPY_TYPES = {
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "INT32": np.int32,
    "FLOAT32": np.float32,
}


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

    def quantize(self, x) -> np.ndarray:
        """One float sample as the tensor takes it: `round(x / scale) +
        zero_point`, clipped to the type's range, for a quantized integer tensor.

        Example:

        >>> info = TensorInfo("x", "INT8", (1, 3), 0.5, -1)
        >>> info.quantize(np.array([[0.2, 100.0, -100.0]])).tolist()
        [[-1, 127, -128]]
        """
        dtype = np.dtype(NUMPY_TYPES[self.type])
        x = np.asarray(x)
        if dtype.kind in "iu" and self.scale and x.dtype.kind == "f":
            limits = np.iinfo(dtype)
            x = np.clip(np.round(x / self.scale + (self.zero_point or 0)), limits.min, limits.max)
        return x.astype(dtype).reshape(self.shape)


def tensor_info(model, index: int, what: str) -> TensorInfo:
    """Tensor `index` of the file's first subgraph (`reading.read_model`).

    Raises:
        ExportError: For a type a project does not write (`C_TYPES`).
    """
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


@dataclasses.dataclass(frozen=True)
class Figures:
    """What a project's files say about the file they were generated from."""

    tflite_name: str  # the .tflite file's name
    format: str  # full_int8, tflm_packed
    model_bytes: int
    operators: list[Operator]
    input: TensorInfo
    output: TensorInfo
    measured_arena: int  # TFLM's recording allocator, on the host
    arena: int  # kTensorArenaSize
    margin_share: float  # the arena's margin: this share of the measured arena,
    margin_min: int  # at least this many bytes,
    align: int  # rounded up to a multiple of this
    sample: np.ndarray  # main.cc's input, as the input tensor takes it
    sample_index: int
    source: str  # where the sample came from
    expected_top1: int  # TFLM's Python interpreter's top-1 class for the sample

    @property
    def decode(self) -> bool:
        """True for a file with TFLM's DECODE operator (a packed file)."""
        return any(o.name == "TFLM_DECODE" for o in self.operators)


def texts(f: Figures, data: bytes) -> dict[str, str]:
    """`{file name: text}` of every file of the project, in `FILES` order."""
    out = {
        "README.md": readme(f),
        "main.cc": main_cc(f),
        "model_ops.h": model_ops_h(f),
        "model_settings.h": model_settings_h(f),
        "model_data.h": micro.c_header("model_data", "MODEL_DATA_H_"),
        "model_data.cc": micro.c_source(data, "model_data", "model_data.h"),
    }
    return {name: out[name] for name in FILES}


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


def model_ops_h(f: Figures) -> str:
    """`model_ops.h`: `ModelOpResolver` and `RegisterModelOps()`, one call per operator."""
    ops = f.operators
    lines = [
        f"// Generated by tflite-export from {f.tflite_name} ({f.format}): the operators the file",
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


def model_settings_h(f: Figures) -> str:
    """`model_settings.h`: the arena, the flash, the input's and output's figures."""
    lines = [
        f"// Generated by tflite-export from {f.tflite_name} ({f.format}): what the code around the",
        "// model needs to know about it.",
        "#ifndef MODEL_SETTINGS_H_",
        "#define MODEL_SETTINGS_H_",
        "",
        "// TFLM's arena for the file, as TFLM's recording allocator measured it on the",
        f"// host: {f.measured_arena:,} bytes. Asked for: that plus a margin of "
        f"{f.arena - f.measured_arena:,} bytes",
        f"// ({f.margin_share:.0%}, at least {f.margin_min:,}, rounded up to {f.align}). "
        "Trim it to what",
        "// interpreter.arena_used_bytes() reports on the target.",
        f"constexpr int kMeasuredArenaBytes = {f.measured_arena};",
        f"constexpr int kTensorArenaSize = {f.arena};",
        "",
        f"// Flash for the model: the C array model_data, {f.model_bytes:,} bytes.",
        f"constexpr int kModelBytes = {f.model_bytes};",
        "",
        *_tensor_lines("Input", f.input),
        "",
        *_tensor_lines("Output", f.output),
        "",
        "// Classes: the output's values per sample.",
        f"constexpr int kNumClasses = {f.output.size};",
        "",
        "#endif  // MODEL_SETTINGS_H_",
        "",
    ]
    return "\n".join(lines)


def main_cc(f: Figures) -> str:
    """`main.cc`: one inference on the sample, its top-1 class checked."""
    x_info, y_info = f.input, f.output
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
        f"// Generated by tflite-export from {f.tflite_name} ({f.format}): runs the model once on",
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
        *_comment(f"Sample {f.sample_index} of {f.source}, {how}."),
        f"const {in_type[0]} kSampleInput[kInputSize] = {{",
        *_c_values(f.sample, x_info.type),
        "};",
        "",
        "// The top-1 class of TFLM's Python interpreter for kSampleInput.",
        f"constexpr int kExpectedTop1 = {f.expected_top1};",
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


def readme(f: Figures) -> str:
    """`README.md`: the files, the operators and CMSIS-NN, the arena and flash, the build."""
    ops, x_info, y_info, n_bytes = f.operators, f.input, f.output, f.model_bytes
    fast = [o.name for o in ops if o.cmsis_nn]
    slow = [o.name for o in ops if not o.cmsis_nn]
    decode = f.decode
    x_dims = "x".join(str(d) for d in x_info.shape)
    y_dims = "x".join(str(d) for d in y_info.shape)
    margin = f.arena - f.measured_arena
    lines = [
        f"# TFLM project for `{f.tflite_name}` ({f.format})",
        "",
        *textwrap.wrap(
            f"Generated by `tflite-export` from the file it wrote and checked. `main.cc` runs "
            f"sample {f.sample_index} of the export's inputs on TFLM and compares its "
            f"top-1 class with {f.expected_top1}, the class TFLM's Python interpreter gave "
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
            f"- RAM: `kTensorArenaSize` = {f.arena:,} bytes: the arena TFLM's "
            f"recording allocator measured for this file on the host, "
            f"{f.measured_arena:,} bytes, plus a margin of {margin:,} bytes "
            f"({f.margin_share:.0%} of it, at least {f.margin_min:,} bytes, "
            f"rounded up to {f.align}). The arena holds the activations"
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
