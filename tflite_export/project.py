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

The operators and their resolver calls come from `resolver`, the files'
text from `project_files`; this module holds the flow. The checks of the
request (`check_request`) import nothing heavy: the command line runs them
before TensorFlow loads. Building a project runs TFLM in a child process
(`runners.run_tflm`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import secrets
import shutil

import numpy as np

from tflite_export import files
from tflite_export.errors import ExportError

#: Formats a project is generated for: full-integer files TFLM runs.
TFLM_FORMATS = ("full_int8", "tflm_packed")
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


@dataclasses.dataclass
class Project:
    """A generated project, in memory: its files' text and the figures in them."""

    files: dict[str, str]  # file name -> text
    figures: object  # project_files.Figures

    def summary(self) -> str:
        """One line for the report."""
        f = self.figures
        calls = ", ".join(f"{o.method}()" for o in f.operators)
        return (
            f"the TFLM project: MicroMutableOpResolver<{len(f.operators)}> with {calls}; "
            f"kTensorArenaSize {f.arena:,} bytes (measured {f.measured_arena:,} + margin); "
            f"main.cc expects top-1 class {f.expected_top1} for sample {f.sample_index} "
            "(TFLM's Python interpreter)"
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
    from tflite_export import (  # noqa: PLC0415 - the interpreters load with a project, not with the command line's checks
        packed,
        project_files,
        reading,
        resolver,
    )

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
    ops = resolver.operators(model)
    x_info = project_files.tensor_info(model, int(sg.inputs[0]), "input")
    y_info = project_files.tensor_info(model, int(sg.outputs[0]), "output")
    candidates = np.asarray(inputs[0])[:SAMPLE_CANDIDATES]
    xs = np.stack([x_info.quantize(x[None]) for x in candidates]).reshape(
        (len(candidates), *x_info.shape[1:])
    )
    index, top1 = _pick_sample(data, xs)
    if measured_arena is None:
        measured_arena = packed.compare_on_tflm(data, data, [candidates[:1]]).arena_bytes
    figures = project_files.Figures(
        tflite_name=tflite_name,
        format=fmt,
        model_bytes=len(data),
        operators=ops,
        input=x_info,
        output=y_info,
        measured_arena=int(measured_arena),
        arena=arena_size(int(measured_arena)),
        margin_share=ARENA_MARGIN_SHARE,
        margin_min=ARENA_MARGIN_MIN_BYTES,
        align=ARENA_ALIGN,
        sample=xs[index],
        sample_index=index,
        source=source,
        expected_top1=top1,
    )
    return Project(project_files.texts(figures, data), figures)


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
