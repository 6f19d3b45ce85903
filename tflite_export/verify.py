"""Read a `.tflite` file back and check its weights against a codebook (any
file: `verify_file`, `check_codebook_file`) or against the trained weights (an
export: `check_weights`, `check_packed_weights`). LiteRT reads plain files;
`tflm_packed` files are decoded from their own bytes and run on TFLM."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import numpy as np

import tfmot_discrete as td
from tflite_export import convert, exact, files, inputs, micro, packed, runners
from tflite_export.errors import ExportError, PackedFileError, TfliteFileError
from tflite_export.exact import EXACT_RTOL
from tflite_export.schema import (
    OUTPUT_CHANNEL_DIM,
    BuiltinOperator,
    storage_name,
    weight_label,
)
from tfmot_discrete.core import text
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk.weights import is_quantized


def litert_weights(it, indices, dtype=np.float64) -> dict[int, np.ndarray]:
    """`{tensor index: dequantized value}` (as `dtype`) of the given constant
    tensors, as LiteRT reads them (int4 comes back unpacked)."""
    out = {}
    wanted = set(indices)
    for d in it.get_tensor_details():
        if d["index"] not in wanted:
            continue
        try:
            raw = it.get_tensor(d["index"])
        except ValueError:
            continue
        if raw is None or raw.size == 0:
            continue
        qp = d["quantization_parameters"]
        scales = np.asarray(qp["scales"], np.float64)
        if scales.size == 0 or raw.dtype.kind == "f":
            out[d["index"]] = raw.astype(dtype, copy=False)
            continue
        out[d["index"]] = exact.dequantize_values(
            raw, scales, qp["zero_points"], qp["quantized_dimension"], dtype
        )
    return out


def channel_fit(values: np.ndarray, codebook: Codebook, dim: int | None, rtol: float = EXACT_RTOL):
    """Per channel: the unit `u` with `values / u` in the codebook, or None.

    Returns (units, max relative deviation from the nearest codebook point).
    """
    if dim is None:
        rows = values.reshape(1, -1)
    else:
        rows = np.moveaxis(values, dim, 0).reshape(values.shape[dim], -1)
    cb = codebook.values
    nonzero = cb[cb != 0]
    units, worst = [], 0.0
    for row in rows:
        peak = row[np.argmax(np.abs(row))] if row.size else 0.0
        if peak == 0:
            units.append(1.0 if 0.0 in cb else None)
            continue
        best = None
        for c in nonzero:
            u = peak / c
            r = row / u
            dev = np.abs(r - codebook.project_numpy(r)).max() / max(1.0, codebook.max_abs)
            if best is None or dev < best[1]:
                best = (u, dev)
        worst = max(worst, best[1])
        units.append(best[0] if best[1] <= rtol else None)
    return units, worst


@dataclasses.dataclass
class WeightCheck:
    """One weight tensor of the file, checked against its codebook."""

    name: str
    codebook: np.ndarray
    bits: int  # ceil(log2 K)
    storage: str  # int4 / int8 / float32
    count: int
    exact: bool
    max_error: float  # max |decoded - trained value|
    #: An 8-bit weight ("int8" in the mapping): exact means the stored integers
    #: and steps are those it trained with.
    trained_int8: bool = False
    index_bits: int | None = None  # tflm_packed: bits of each stored index
    table: np.ndarray | None = None  # tflm_packed: int8 value table (first channel's)
    tables: int = 0  # tflm_packed: 1 (one table for the tensor) or one per channel
    tensor: str | None = None  # `verify_file`: the tensor's name in the file

    @property
    def stored_bits(self) -> int:
        if self.index_bits is not None:
            return self.index_bits
        return {"int4": 4, "int8": 8, "float32": 32, "float16": 16}.get(self.storage, 32)

    def to_dict(self) -> dict:
        """The check as JSON-serializable data (a report's and a `FileCheck`'s `weights`)."""
        return {
            "name": self.name,
            "codebook": [float(v) for v in np.asarray(self.codebook).reshape(-1)],
            "trained_int8": self.trained_int8,
            "bits": int(self.bits),
            "storage": self.storage,
            "stored_bits": int(self.stored_bits),
            "count": int(self.count),
            "exact": bool(self.exact),
            "max_error": json_number(self.max_error),
            "value_table": None if self.table is None else [int(v) for v in self.table],
            "tables": int(self.tables),
            "tensor": self.tensor,
        }


def json_number(x):
    """`x` as a JSON number, or None for a missing or non-finite one."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def check_codebook_file(model_bytes: bytes, codebook: Codebook) -> list[WeightCheck]:
    """Every weight tensor (FC, conv, depthwise, transpose conv, embedding) of
    the file must be `codebook x one factor per output channel`.

    A `tflm_packed` file's packed tensors are decoded from its own bytes (no
    interpreter); other files are read back with LiteRT.

    Raises:
        TfliteFileError: For bytes that are not a readable `.tflite` file
            (`PackedFileError` for a damaged packed one).
    """
    if packed.is_packed(model_bytes):
        return _check_packed_codebook(model_bytes, codebook)
    try:
        return _check_litert_codebook(model_bytes, codebook)
    except Exception as e:
        raise TfliteFileError(f"not a readable .tflite file ({_one_line(e)})") from e


def _one_line(error: BaseException) -> str:
    """`Type: first line of the message` (interpreters raise many-line errors)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def _check_litert_codebook(model_bytes: bytes, codebook: Codebook) -> list[WeightCheck]:
    fb = exact.read(model_bytes)
    it = runners.interpreter(model_bytes)
    found = exact.weight_tensors(fb)
    values = litert_weights(it, [t for _, t in found])
    sg = fb.subgraphs[0]
    out = []
    for op_i, t in found:
        code = fb.operatorCodes[sg.operators[op_i].opcodeIndex].builtinCode
        if code == BuiltinOperator.MUL:  # MUL constants are not weights of a quantizable layer
            continue
        tensor = sg.tensors[t]
        v = values.get(t)
        if v is None:
            v = exact.dequantize(fb, tensor)
        dim = _channel_dim(code, tensor)
        units, worst = channel_fit(v, codebook, dim)
        tensor_name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        out.append(
            WeightCheck(
                name=weight_label(tensor_name, code),
                tensor=tensor_name,
                codebook=codebook.values,
                bits=codebook.bits,
                storage=storage_name(tensor),
                count=int(v.size),
                exact=all(u is not None for u in units),
                max_error=float(worst),
            )
        )
    return out


def _channel_dim(code, tensor):
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) > 1:
        return int(q.quantizedDimension)
    return OUTPUT_CHANNEL_DIM.get(code, 0)


def check_weights(model_bytes: bytes, matches) -> list[WeightCheck]:
    """Reads the file back with LiteRT; each codebook weight vs its trained value.

    Args:
        model_bytes: The `.tflite` file.
        matches: `exact.TensorMatch`es: where each codebook weight is stored.

    Returns:
        One `WeightCheck` per match.
    """
    fb = exact.read(model_bytes)
    it = runners.interpreter(model_bytes)
    out = []
    for m in matches:
        # One tensor at a time, compared a chunk of channels at a time.
        tensor = fb.subgraphs[0].tensors[m.tensor]
        v = litert_weights(it, [m.tensor], np.float32).get(m.tensor)
        if v is None:
            v = exact.dequantize(fb, tensor)
        v = v.reshape(m.reference.shape)
        units = exact.channel_broadcast(np.where(m.units == 0, 1.0, m.units), v.ndim, m.channel_dim)
        err = dev = 0.0
        for rows in exact.row_chunks(v, 0 if m.channel_dim is None else m.channel_dim):
            u = units if units.ndim == 0 else units[rows]
            err = max(err, float(np.abs(v[rows] - m.reference[rows]).max(initial=0.0)))
            dev = max(dev, float(np.abs(v[rows] / u - m.codes[rows]).max(initial=0.0)))
        # (a folded multiplier's codes are its values times another codebook's)
        top = m.cw.codebook.max_abs if m.folded_into is None else exact.max_abs(m.codes)
        dev /= max(1.0, top)
        out.append(
            WeightCheck(
                name=m.cw.label,
                codebook=m.cw.codebook.values,
                bits=m.cw.codebook.bits,
                storage=storage_name(tensor),
                count=int(m.cw.codes.size),  # a folded multiplier: its vector's length
                exact=dev <= EXACT_RTOL,
                max_error=err,
                trained_int8=m.cw.trained_int8,
            )
        )
        del v
    return out


def check_packed_weights(packed_bytes: bytes, full_int8: bytes, matches) -> list[WeightCheck]:
    """Each codebook weight decoded from the packed file's own bytes (no TFLM).

    A weight is exact when its decoded int8 values equal the `full_int8`
    file's and, times its channel's scale, are `codebook x channel unit`.

    Returns:
        A `WeightCheck` per match.

    Raises:
        PackedFileError: A damaged file, or a codebook weight left unpacked.
    """
    read = {p.encoded: p for p in packed.read_packed(packed_bytes)}
    fb = exact.read(full_int8)
    out = []
    for m in matches:
        p = read.get(m.tensor)
        if p is None:
            raise PackedFileError(f"{m.cw.label}: not stored as indices in the packed file.")
        ints = exact.stored_values(fb, fb.subgraphs[0].tensors[m.tensor])
        lossless = ints is not None and np.array_equal(ints.reshape(p.values.shape), p.values)
        v = p.dequantized().reshape(m.reference.shape)
        units = exact.channel_broadcast(np.asarray(m.units, np.float64), v.ndim, m.channel_dim)
        codes = v / np.where(units == 0, 1.0, units)
        top = m.cw.codebook.max_abs if m.folded_into is None else exact.max_abs(m.codes)
        dev = float(np.abs(codes - m.codes).max()) / max(1.0, top)
        out.append(
            WeightCheck(
                name=m.cw.label,
                codebook=m.cw.codebook.values,
                bits=m.cw.codebook.bits,
                storage=f"{p.bits}-bit index",
                count=int(m.cw.codes.size),
                exact=lossless and dev <= EXACT_RTOL,
                max_error=float(np.abs(v - m.reference).max()),
                index_bits=p.bits,
                table=np.array(p.tables[0]),
                tables=int(p.tables.shape[0]),
            )
        )
    return out


def _check_packed_codebook(model_bytes: bytes, codebook) -> list[WeightCheck]:
    """Every packed tensor of the file, decoded from its bytes, must be
    `codebook x one factor per output channel` (no interpreter involved).

    Raises:
        PackedFileError: For a damaged file.
    """
    out = []
    for p in packed.read_packed(model_bytes):
        v = p.dequantized()
        dim = p.channel_dim if p.scales.size > 1 else None
        units, worst = channel_fit(v, codebook, dim)
        out.append(
            WeightCheck(
                name=p.name,
                codebook=codebook.values,
                bits=codebook.bits,
                storage=f"{p.bits}-bit index",
                count=int(v.size),
                exact=all(u is not None for u in units),
                max_error=float(worst),
                index_bits=p.bits,
                table=np.array(p.tables[0]),
                tables=int(p.tables.shape[0]),
            )
        )
    return out


@dataclasses.dataclass
class FileCheck:
    """What `verify_file` found in a `.tflite` file."""

    path: str
    size_bytes: int
    codebook: np.ndarray
    packed: bool  # a tflm_packed file: decoded from its bytes, run on TFLM
    weights: list[WeightCheck]
    runner: str  # "LiteRT" or "TFLM"
    samples: int = 0  # inputs the file ran on
    outputs_finite: bool | None = None  # without a model: the outputs on random inputs
    model: str | None = None  # the Keras model the outputs were compared with
    max_abs_diff: float | None = None
    output_range: float | None = None
    refusal: str | None = None  # why TFLM cannot run the file (then not tried)

    @property
    def exact(self) -> bool:
        """Every weight tensor is in the codebook (false when there are none)."""
        return bool(self.weights) and all(w.exact for w in self.weights)

    @property
    def ok(self) -> bool:
        return self.exact and self.outputs_finite is not False and self.refusal is None

    def __str__(self) -> str:
        shown = text.format_values(self.codebook, len(self.codebook))
        kind = ", tflm_packed" if self.packed else ""
        lines = [f"{self.path}: {self.size_bytes:,} bytes{kind}, codebook {shown}"]
        for c in self.weights:
            status = "exact" if c.exact else f"NOT in codebook (max deviation {c.max_error:.3g})"
            storage = c.storage
            if self.packed:
                table = ", ".join(str(int(v)) for v in c.table)
                layout = "one table" if c.tables == 1 else f"{c.tables} tables"
                storage += f" ({layout}, int8 values {{{table}}})"
            lines.append(f"  {c.name}: {storage}, {c.count:,} weights, {status}")
        if not self.weights:
            lines.append("  no weight tensors found")
        if self.refusal is not None:
            lines.append(f"  TFLM cannot run it: {self.refusal}")
        elif self.model is not None:
            who = "TFLM outputs" if self.runner == "TFLM" else "outputs"
            rel = (self.max_abs_diff or 0.0) / (self.output_range or 1.0)
            lines.append(
                f"  {who} vs {self.model}: max abs diff {self.max_abs_diff:.3g} "
                f"({rel:.2e} of output range)"
            )
        elif self.runner == "TFLM":
            lines.append(f"  ran on {self.samples} random inputs with TFLM")
        else:
            finite = "outputs finite" if self.outputs_finite else "NON-FINITE outputs"
            lines.append(f"  ran on {self.samples} random inputs with LiteRT: {finite}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The check as JSON-serializable data.

        Keys: `path`, `size_bytes`, `codebook`, `packed`, `runner`, `ok`,
        `exact`, `weights` (one per weight tensor, as in an export report),
        `outputs` (`samples`, `finite`, `model`, `max_abs_diff`,
        `output_range`), `refusal`.
        """
        return {
            "path": self.path,
            "size_bytes": int(self.size_bytes),
            "codebook": [float(v) for v in np.asarray(self.codebook).reshape(-1)],
            "packed": self.packed,
            "runner": self.runner,
            "ok": self.ok,
            "exact": self.exact,
            "weights": [w.to_dict() for w in self.weights],
            "outputs": {
                "samples": int(self.samples),
                "finite": self.outputs_finite,
                "model": self.model,
                "max_abs_diff": json_number(self.max_abs_diff),
                "output_range": json_number(self.output_range),
            },
            "refusal": self.refusal,
        }

    def to_json(self, path=None) -> str:
        """The check as JSON text; also written to `path` when given (atomically).

        Raises:
            ExportError: When `path` cannot be written.
        """
        return files.write_json(self.to_dict(), path, "check")


def _codebook(codebook) -> Codebook:
    if isinstance(codebook, Codebook):
        return codebook
    try:
        return Codebook([float(v) for v in codebook])
    except (TypeError, ValueError) as e:
        raise ExportError(
            f"`codebook` must be a Codebook or at least 2 distinct numbers ({e}). "
            f"Received: codebook={codebook!r}"
        ) from e


def _run(path: str, data: bytes, xs, on_tflm: bool) -> list[np.ndarray]:
    """The file's outputs (`xs=None`: 8 random inputs), in the child process."""
    try:
        if on_tflm:
            return runners.run_tflm(data, xs, dequantize=True)
        return runners.run_litert(data, xs, isolated=True)
    except TfliteFileError:
        raise
    except ExportError as e:
        raise TfliteFileError(f"{path!r} is not a readable .tflite file: {e}") from None


def verify_file(
    path, codebook, model=None, representative_data=None, safe_mode: bool = True
) -> FileCheck:
    """Checks a `.tflite` file from anywhere against a codebook.

    Every weight tensor must be `codebook x one factor per output channel`.
    The file then runs, in a child process (a file that crashes the
    interpreter ends that process, not this one): on the inputs of
    `representative_data` against `model`'s outputs when a model is given,
    else on 8 random inputs, whose outputs must be finite. LiteRT runs plain
    files; a `tflm_packed` file is decoded from its bytes and runs on TFLM.

    Args:
        path: The `.tflite` file.
        codebook: A `Codebook` or the values, e.g. `[1, -1, 0.5, -0.5]`.
        model: A Keras model or the path of a saved one to compare outputs
            with. Defaults to `None`.
        representative_data: Inputs for that comparison (random ones
            otherwise). Defaults to `None`.
        safe_mode: Keras safe mode when loading a `.keras` model.

    Returns:
        A `FileCheck`; `ok` tells whether everything checked out.

    Raises:
        ExportError: A missing file or a bad argument.
        TfliteFileError: A file that is not a readable `.tflite` file
            (`PackedFileError`: a damaged `tflm_packed` one).

    Example:

    >>> check = verify_file("missing.tflite", [1, -1])
    Traceback (most recent call last):
    ...
    tflite_export.errors.ExportError: File not found. Received: 'missing.tflite'
    """
    name = os.fspath(path)
    p = pathlib.Path(name)
    if not p.is_file():
        raise ExportError(f"File not found. Received: {name!r}")
    codebook = _codebook(codebook)
    data = p.read_bytes()
    is_packed = packed.is_packed(data)
    check = FileCheck(
        path=name,
        size_bytes=len(data),
        codebook=codebook.values,
        packed=is_packed,
        weights=[],
        runner="TFLM" if is_packed else "LiteRT",
    )
    if is_packed:
        try:
            check.weights = check_codebook_file(data, codebook)
            reasons = micro.tflm_abort_reasons(runners.read_tflm_model(data))
        except TfliteFileError as e:
            raise PackedFileError(f"{name!r} is a damaged tflm_packed file: {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever a malformed file makes the reader raise
            raise PackedFileError(
                f"{name!r} is a damaged tflm_packed file: {_one_line(e)}"
            ) from None
        if reasons:  # known to abort TFLM: said, not tried
            check.refusal = reasons[0]
            return check
    else:
        # LiteRT first, in the child: a crash there is reported like any bad file.
        probe = _run(name, data, None, on_tflm=False)
        try:
            check.weights = check_codebook_file(data, codebook)
        except TfliteFileError as e:
            raise TfliteFileError(f"{name!r} is {e}") from None
    if model is None:
        outputs = probe if not is_packed else _run(name, data, None, on_tflm=True)
        check.samples = len(outputs[0]) if outputs else 0
        check.outputs_finite = all(bool(np.all(np.isfinite(o))) for o in outputs)
        return check
    _compare(check, data, model, representative_data, safe_mode)
    return check


def _compare(check: FileCheck, data: bytes, model, representative_data, safe_mode) -> None:
    """The file's outputs against the (stripped) Keras model's."""
    if isinstance(model, (str, os.PathLike)):
        check.model = os.fspath(model)
        model = convert.load_model(model, safe_mode=safe_mode)
    else:
        check.model = getattr(model, "name", "the model")
    plain = td.strip_quantization(model) if is_quantized(model) else model
    # A subclassed model has no `inputs` (None on tf_keras): it takes what the file takes.
    specs = None if getattr(plain, "inputs", None) else inputs.file_input_specs(data)
    if representative_data is not None:
        xs = inputs.representative(plain, representative_data, specs=specs)
    else:
        xs = inputs.random_inputs(plain, specs=specs)
    ref = np.asarray(plain.predict(xs[0] if len(xs) == 1 else xs, verbose=0))
    got = _run(check.path, data, xs, on_tflm=check.packed)[0]
    if got.size != ref.size:
        raise ExportError(
            f"The file's output has {got.size} values for {len(ref)} inputs; the model "
            f"{check.model!r} gives {ref.size}: they are not the same model."
        )
    check.samples = len(ref)
    check.max_abs_diff = float(np.abs(got.reshape(ref.shape) - ref).max())
    check.output_range = float(ref.max() - ref.min()) or 1.0
