"""`export`: QAT or plain Keras model -> verified, codebook-exact `.tflite` file."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

import tfmot_discrete as td
from tflite_export import budget, convert, exact, files, inputs, micro, packed, runners, verify
from tflite_export.errors import ExportError
from tflite_export.schema import QMAX, TensorType, storage_name
from tfmot_discrete import text
from tfmot_discrete.quantize import check_finite, codebook_items, is_quantized

#: Weight-only files must agree with the Keras model within this share of the
#: output range.
WEIGHT_ONLY_RTOL = 1e-4
#: TFLM and LiteRT may round differently by this many int8 steps per
#: requantizing layer (their kernels round differently); the differences add
#: up through a chain of layers.
TFLM_LSB = 2


@dataclasses.dataclass
class Report:
    """What `export` wrote and what it checked."""

    path: str
    format: str
    size_bytes: int
    float_size_bytes: int
    weights: list[verify.WeightCheck]
    max_abs_diff: float
    mean_abs_diff: float
    output_range: float
    tolerance: float | None
    samples: int
    tflm_max_lsb: int | None = None
    tflm_share_differing: float | None = None
    tflm_layers: int = 1
    c_array: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    full_int8_size_bytes: int | None = None  # tflm_packed: the file it was packed from
    tflm: packed.TflmComparison | None = None  # tflm_packed: both files on TFLM
    budget: budget.BudgetReport | None = None  # flash / ram given: the file against them

    @property
    def exact(self) -> bool:
        return all(w.exact for w in self.weights)

    @property
    def outputs_agree(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance

    @property
    def tflm_agrees(self) -> bool:
        return self.tflm_max_lsb is None or self.tflm_max_lsb <= TFLM_LSB * self.tflm_layers

    @property
    def ok(self) -> bool:
        packed_ok = self.tflm is None or self.tflm.identical
        return self.outputs_agree and self.tflm_agrees and packed_ok

    @property
    def size_ratio(self) -> float:
        return self.float_size_bytes / max(1, self.size_bytes)

    def __str__(self) -> str:
        rows = [("weight", "codebook", "bits", "stored", "weights", "exact / max error")]
        if self.tflm is not None:
            rows[0] += ("int8 value table",)
        for w in self.weights:
            row = (
                w.name,
                "int8 (trained)" if w.trained_int8 else text.format_values(w.codebook),
                str(w.bits),
                w.storage,
                f"{w.count:,}",
                "exact" if w.exact else f"max error {w.max_error:.3g}",
            )
            if self.tflm is not None and w.table is None:
                row += ("- (int8, not packed)",)
            elif self.tflm is not None:
                table = "{" + ", ".join(str(int(v)) for v in w.table) + "}"
                row += (table if w.tables == 1 else f"{w.tables} tables, first {table}",)
            rows.append(row)
        lines = [f"{self.path}  ({self.format})", *text.table_lines(rows)]
        n = sum(w.count for w in self.weights)
        if n:
            stored = sum(w.count * w.stored_bits for w in self.weights) / n
            needed = sum(w.count * w.bits for w in self.weights) / n
            lines.append(
                f"bits per weight: {stored:.2f} stored, {needed:.2f} needed (ceil(log2 K)), 32 float"
            )
        lines.append(
            f"file size: {self.size_bytes:,} bytes; float file {self.float_size_bytes:,} bytes "
            f"({self.size_ratio:.2f}x smaller)"
        )
        if self.full_int8_size_bytes is not None:
            lines[-1] += (
                f"; full_int8 file {self.full_int8_size_bytes:,} bytes "
                f"({self.full_int8_size_bytes / max(1, self.size_bytes):.2f}x smaller)"
            )
        rel = self.max_abs_diff / self.output_range if self.output_range else 0.0
        tol = f"<= {self.tolerance:.3g} required" if self.tolerance is not None else "reported only"
        lines.append(
            f"outputs vs Keras on {self.samples} inputs: max abs diff {self.max_abs_diff:.3g}, "
            f"mean {self.mean_abs_diff:.3g} "
            f"({rel:.2e} of output range {self.output_range:.3g}; {tol})"
        )
        if self.tflm_max_lsb is not None:
            lines.append(
                f"TFLM vs LiteRT on the same int8 inputs: max difference {self.tflm_max_lsb} LSB, "
                f"{100 * (self.tflm_share_differing or 0):.2f} % of outputs differ "
                f"(<= {TFLM_LSB} LSB x {self.tflm_layers} requantizing layers accepted)"
            )
        t = self.tflm
        if t is not None:
            same = "identical" if t.identical else f"DIFFER by up to {t.max_lsb} LSB"
            lines.append(
                f"TFLM, this file vs the full_int8 file on {t.samples} inputs: outputs {same}; "
                f"arena {t.arena_bytes:,} vs {t.full_int8_arena_bytes:,} bytes (decoded "
                f"weights are written there before their layer runs); latency "
                f"{1e6 * t.latency_s:.0f} vs {1e6 * t.full_int8_latency_s:.0f} us per inference "
                "(this host). Only TFLM runs this file."
            )
        if self.c_array:
            lines.append(f"C array: {self.c_array}")
        lines += self.notes
        if self.budget is not None:
            lines.append(str(self.budget))
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _prepare(model, safe_mode):
    if isinstance(model, (str, os.PathLike)):
        model = convert.load_model(model, safe_mode=safe_mode)
    if isinstance(model, bytes):
        raise ExportError("`model` must be a Keras model or a path; received bytes.")
    qat = model if is_quantized(model) else None
    try:
        check_finite(model)
    except ValueError as e:
        raise ExportError(f"The model cannot be exported: {e}") from None
    plain = td.strip_quantization(model) if qat is not None else model
    return plain, qat


@dataclasses.dataclass
class Conversion:
    """What `convert_bytes` made, before anything is written."""

    data: bytes  # the file, codebook weights on their exact lattice
    float_size: int  # bytes of the float file of the same model (size reference)
    matches: list[exact.TensorMatch]  # where each codebook weight is stored
    reference: object  # the Keras model the file's outputs are held to
    inputs: list[np.ndarray]  # sample inputs for the output check
    notes: list[str]


def _converted(fmt, plain, qat, rep, from_qat) -> tuple[bytes, bytes]:
    """`(file in the format, float file)`, straight from the converters."""
    float_bytes = convert.float_tflite(plain)
    if fmt == "float":
        return float_bytes, float_bytes
    if from_qat:
        # Trained with simulated int8 activations: keep the learned ranges.
        return convert.full_int8_from_qat(qat), float_bytes
    if fmt == "full_int8":
        return convert.full_int8_tflite(plain, zip(*rep)), float_bytes
    bits = 8 if fmt == "int8" else 4
    return convert.weight_only_tflite(float_bytes, bits), float_bytes


def _tolerance_of(tensor, got) -> float:
    """How far a stored tensor may be from its expected value to be the one:
    half a step for integer tensors, float rounding for float ones."""
    q = tensor.quantization
    if tensor.type in QMAX and q is not None and q.scale is not None and len(q.scale):
        return 0.51 * float(np.max(q.scale))
    return 1e-5 * max(1e-30, exact.max_abs(got))


def _find_codebook_weights(fb, out, float_bytes, cws) -> list[exact.TensorMatch]:
    """Each codebook weight's tensor: matched in the float file, then located in `fb`."""
    matches, missing = exact.match_weights(exact.read(float_bytes), cws)
    if not missing and out is not float_bytes:
        matches, missing = exact.locate(fb, matches, _tolerance_of)
    if missing:
        raise ExportError(
            f"Could not find the codebook weights {missing} in the converted file; the "
            "converter rewrote them beyond a per-channel factor."
        )
    return matches


def _write_lattices(fb, matches, allow_inexact, notes) -> None:
    """Rewrites each integer codebook tensor of `fb` on its exact lattice (in place)."""
    for m in matches:
        tensor = fb.subgraphs[0].tensors[m.tensor]
        if tensor.type not in QMAX:
            continue
        # A weight trained at 8 bits stays int8 in an int4 file (write_exact).
        qmax = QMAX[TensorType.INT8] if m.cw.trained_int8 else QMAX[tensor.type]
        g = m.cw.codebook.integer_step(qmax)
        if g is not None:
            exact.write_exact(fb, m, g)
            continue
        storage = storage_name(tensor)
        if not allow_inexact:
            raise ExportError(
                f"Layer {m.cw.layer!r} ({m.cw.weight}): codebook "
                f"{[float(v) for v in m.cw.codebook.values]} has no exact {storage} "
                f"lattice (no step makes every value an integer within ±{qmax}); "
                f"smallest exact format: {exact.smallest_exact_format(m.cw.codebook)}. "
                "Pass allow_inexact=True (--allow-inexact) to write it anyway."
            )
        notes.append(f"{m.cw.label}: no exact {storage} lattice; written inexact")


def _check_packable(qat) -> None:
    """`tflm_packed` needs codebook weights of at most 128 values."""
    items = codebook_items(qat) if qat is not None else []
    if not items:
        raise ExportError(
            "format='tflm_packed' stores codebook weights as indices, and this model has none "
            "(a plain float model, or no layer quantized to a codebook). Smallest format that "
            "fits: full_int8 for TFLM (int4 weight-only for LiteRT). Received: "
            "format='tflm_packed'"
        )
    for label, _, q, _ in items:
        k = q.codebook.size
        if k > packed.MAX_VALUES:
            fits = "full_int8" if q.codebook.integer_step(127) is not None else "float"
            layer, weight = label.rsplit("/", 1)
            raise ExportError(
                f"Layer {layer!r} ({weight}): a codebook of {k} values needs "
                f"{q.codebook.bits}-bit indices; tflm_packed stores at most "
                f"{packed.MAX_BITS}-bit indices (K <= {packed.MAX_VALUES}). Smallest format "
                f"that fits: {fits}. Received: format='tflm_packed', K={k}"
            )


def convert_bytes(
    model, format="int8", representative_data=None, allow_inexact=False, safe_mode=True
) -> Conversion:
    """Converts without writing or checking outputs; see `export` for the arguments.

    Returns:
        A `Conversion`; for `tflm_packed`, of the `full_int8` file it is
        packed from.
    """
    fmt = convert.check_format(format)
    plain, qat = _prepare(model, safe_mode)
    requested = fmt
    if fmt == "tflm_packed":
        _check_packable(qat)
        fmt = "full_int8"  # packed by `export` once checked
    rep = inputs.representative(plain, representative_data)
    from_qat = fmt == "full_int8" and qat is not None and convert.has_activation_quantizers(qat)
    if fmt == "full_int8" and rep is None and not from_qat:
        raise ExportError(
            f"format={requested!r} needs `representative_data` (an array of sample inputs, or "
            "a generator of them) to calibrate activation ranges."
        )
    out, float_bytes = _converted(fmt, plain, qat, rep, from_qat)
    float_size = len(float_bytes)
    # Read from the QAT model only now: the converter's peak does not hold them.
    cws = exact.codebook_weights(qat) if qat is not None else []
    notes, matches = [], []
    if cws:
        fb = exact.read(out)
        matches = _find_codebook_weights(fb, out, float_bytes, cws)
        del float_bytes, cws  # not held through patching and verifying
        _write_lattices(fb, matches, allow_inexact, notes)
        out = exact.write(fb)
        del fb
    if from_qat:
        notes.append("activation ranges: learned in training (activations='int8'), not calibrated")
    # Outputs are checked against what was trained: the QAT model itself when it
    # simulates int8 activations, else the stripped float model.
    return Conversion(
        data=out,
        float_size=float_size,
        matches=matches,
        reference=qat if from_qat else plain,
        inputs=rep if rep is not None else inputs.random_inputs(plain),
        notes=notes,
    )


@dataclasses.dataclass
class _OutputCheck:
    max_abs_diff: float
    mean_abs_diff: float
    output_range: float
    tolerance: float | None


def _check_outputs(conv: Conversion, fmt, weights, allow_inexact) -> _OutputCheck:
    """LiteRT's outputs against the Keras model's, and the tolerance they are held to."""
    xs = conv.inputs
    keras_out = np.asarray(
        conv.reference.predict(xs if len(xs) > 1 else xs[0], verbose=0), np.float64
    )
    lite_out = runners.run_litert(conv.data, xs)[0].reshape(keras_out.shape)
    out_range = float(keras_out.max() - keras_out.min()) or 1.0
    tolerance = WEIGHT_ONLY_RTOL * out_range if fmt != "full_int8" else None
    if any(not w.exact for w in weights) and allow_inexact:
        # The weights differ from the trained ones on purpose: report only.
        tolerance = None
        conv.notes.append(f"outputs not held to {WEIGHT_ONLY_RTOL:g} of the range: inexact weights")
    uncovered = verify.integer_weights_without_codebook(conv.data, conv.matches)
    if uncovered and tolerance is not None:
        # Float weights the tool rounded to its own integer grid: their error
        # is the format's, not ours to hold to the codebook tolerance.
        tolerance = None
        conv.notes.append(
            f"outputs reported only: {uncovered} weight tensor(s) without a codebook were "
            f"rounded to {fmt} by the converter"
        )
    diff = np.abs(lite_out - keras_out)
    return _OutputCheck(float(diff.max()), float(diff.mean()), out_range, tolerance)


def _tflm_check(data: bytes, xs) -> tuple[int, float, int]:
    """TFLM against LiteRT on the same int8 inputs: `(max LSB difference, share
    of outputs that differ, requantizing layers)`."""
    # TFLM aborts the process on some files; it runs in a child process, and
    # what is known to make it abort is named before it is even tried.
    reasons = micro.tflm_abort_reasons(exact.read(data))
    try:
        if reasons:
            raise ExportError(f"TFLM cannot load the file: {'; '.join(reasons)}.")
        tflm = runners.run_tflm(data, xs)[0].astype(np.int32)
    except ExportError as e:
        raise ExportError(
            f"The TFLM check of the full_int8 file failed; nothing written. {e} "
            "(LiteRT runs the file; format='int8' keeps float activations.)"
        ) from None
    lite = runners.run_litert(data, xs, raw=True)[0].astype(np.int32)
    d = np.abs(tflm - lite)
    layers = max(1, len(exact.weight_tensors(exact.read(data))))
    return int(d.max()), float((d > 0).mean()), layers


def _pack_and_check(report: Report, full_int8: bytes, conv: Conversion, budgets) -> bytes:
    """Packs a checked full_int8 file; `report` then describes the packed file."""
    # Weights trained as plain int8 ("int8" in the mapping) stay int8.
    codebook = [m for m in conv.matches if not m.cw.trained_int8]
    codebook, notes = budget.select(codebook, budgets, full_int8, conv.inputs)
    report.notes += notes
    if not codebook:
        return full_int8  # nothing fits the RAM budget packed: the full_int8 file
    labels = {m.cw.label for m in codebook}
    kept = [w for w in report.weights if w.name not in labels]
    try:
        data = packed.pack(full_int8, [m.tensor for m in codebook])
        report.weights = packed.check_weights(data, full_int8, codebook) + kept
    except packed.PackedFileError as e:
        raise ExportError(f"Cannot pack the codebook weights: {e} Nothing written.") from e
    report.tflm = packed.compare_on_tflm(data, full_int8, conv.inputs)
    report.format = "tflm_packed"
    report.full_int8_size_bytes = len(full_int8)
    report.size_bytes = len(data)
    report.notes.append(
        "outputs vs Keras and TFLM vs LiteRT: of the full_int8 file, which the packed file "
        "matches exactly on TFLM"
    )
    return data


def export(
    model,
    path,
    format="int8",
    representative_data=None,
    allow_inexact=False,
    c_array=None,
    safe_mode=True,
    flash=None,
    ram=None,
    pack=None,
) -> Report:
    """Writes a verified `.tflite` file whose codebook weights are exact.

    Args:
        model: A QAT model from `td.quantize_model`, a stripped or plain
            tf_keras model, or the path of a saved one (`.keras`, `.h5`,
            SavedModel directory; loaded inside `td.quantize_scope()`).
        path: Where to write the `.tflite` file (atomically).
        format: `"float"`, `"int8"` (weight-only, per channel), `"int4"`
            (weight-only, per channel), `"full_int8"` (int8 weights and
            activations, int8 input/output) or `"tflm_packed"` (`full_int8`
            with codebook weights as ceil(log2 K)-bit indices into value
            tables, decoded by TFLM's DECODE operator; only TFLM runs it).
            Defaults to `"int8"`.
        representative_data: Sample inputs, an array `(N, ...)` or a generator
            of samples; required for `full_int8` and `tflm_packed` (unless the
            model was trained with `activations="int8"`), also used for the
            output check (random inputs otherwise).
        allow_inexact: Write a codebook with no exact integer lattice anyway,
            reporting the max error. Defaults to `False`.
        c_array: Also write a C source file (and header) for TFLM.
        safe_mode: Keras safe mode when loading a `.keras` file.
        flash: Flash budget for the file, bytes (an int, or a string such as
            `"64KiB"`); a larger file is refused. Defaults to `None`.
        ram: RAM budget for TFLM's arena (`full_int8`, `tflm_packed`):
            `tflm_packed` packs only the weights whose decoded size fits it,
            those that save the most flash first (`budget.select`), and a
            file whose measured arena exceeds it is refused. Defaults to
            `None`.
        pack: Layer names whose codebook weights `tflm_packed` packs (a
            plan's `export_kwargs`); None packs every codebook weight that
            `ram` allows. Defaults to `None`.

    Returns:
        A `Report`.

    Raises:
        ExportError: Bad arguments, a codebook with no exact lattice, or a file
            that fails verification; nothing is written then.
    """
    target = pathlib.Path(os.fspath(path))
    if target.is_dir():
        raise ExportError(f"`path` is a directory. Received: path={str(target)!r}")
    budgets = budget.Budgets.of(format, flash, ram, pack)
    conv = convert_bytes(model, format, representative_data, allow_inexact, safe_mode)
    pack = format == "tflm_packed"
    if pack:
        format = "full_int8"  # checked as such first, then packed
    weights = verify.check_weights(conv.data, conv.matches)
    outputs = _check_outputs(conv, format, weights, allow_inexact)
    tflm_lsb = tflm_share = None
    tflm_layers = 1
    if format == "full_int8":
        tflm_lsb, tflm_share, tflm_layers = _tflm_check(conv.data, conv.inputs)
    report = Report(
        path=str(target),
        format=format,
        size_bytes=len(conv.data),
        float_size_bytes=conv.float_size,
        weights=weights,
        max_abs_diff=outputs.max_abs_diff,
        mean_abs_diff=outputs.mean_abs_diff,
        output_range=outputs.output_range,
        tolerance=outputs.tolerance,
        samples=len(conv.inputs[0]),
        tflm_max_lsb=tflm_lsb,
        tflm_share_differing=tflm_share,
        tflm_layers=tflm_layers,
        notes=conv.notes,
    )
    data = conv.data
    if pack and report.ok:
        data = _pack_and_check(report, conv.data, conv, budgets)
    if not report.ok or (not report.exact and not allow_inexact):
        raise ExportError(f"Verification failed; nothing written.\n{report}")
    if budgets.given:
        report.budget = budget.measure(data, conv.data, conv.matches, conv.inputs, budgets, report)
        budget.check(report.budget)
    files.atomic_write(target, data)
    if c_array is not None:
        report.c_array = micro.write_c_array(data, c_array)
    return report
