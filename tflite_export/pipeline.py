"""`export`: QAT or plain Keras model -> verified, codebook-exact `.tflite` file.

The top of the package with `__main__`: the flow from a model to a checked
file, each stage announced (`progress`) and each failure an `ExportError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import numpy as np

import tfmot_discrete as td
from tflite_export import (
    agreement,
    biases,
    budget,
    convert,
    exact,
    files,
    inputs,
    keras3,
    lattice,
    micro,
    native,
    packed,
    project,
    runners,
    sequence,
    tfbackend,
    verify,
)
from tflite_export.errors import ExportError, MissingDataError, VerificationError
from tflite_export.formats import TARGETS
from tflite_export.logs import library_logs, without_startup_lines
from tflite_export.progress import Progress
from tflite_export.report import TFLM_LSB, Report, RoundedWeight
from tfmot_discrete.tfk import recurrent
from tfmot_discrete.tfk.weights import check_finite, codebook_items, int8_items, is_quantized

#: Weight-only files must agree with the Keras model within this share of the
#: output range.
WEIGHT_ONLY_RTOL = 1e-4
__all__ = ["Conversion", "Report", "TFLM_LSB", "WEIGHT_ONLY_RTOL", "convert_bytes", "export"]


def _prepare(model, safe_mode):
    """`(plain model, QAT model or None, the model is a Keras 3 one)`."""
    if isinstance(model, (str, os.PathLike)):
        model = convert.load_model(model, safe_mode=safe_mode)
    if isinstance(model, bytes):
        raise ExportError("`model` must be a Keras model or a path; received bytes.")
    from_keras3 = keras3.is_keras3_model(model)
    if from_keras3:
        r = keras3.route(model)
        if r.native:  # tf_keras cannot rebuild it: converted as it is
            return native.prepare(r), None, True
        model = r.twin
    qat = model if is_quantized(model) else None
    try:
        check_finite(model)
    except ValueError as e:
        raise ExportError(f"The model cannot be exported: {e}") from None
    plain = td.strip_quantization(model) if qat is not None else model
    return plain, qat, from_keras3


@dataclasses.dataclass
class Conversion:
    """What `convert_bytes` made, before anything is written."""

    data: bytes  # the file, codebook weights on their exact lattice
    float_size: int  # bytes of the float file of the same model (size reference)
    matches: list[exact.TensorMatch]  # where each codebook weight is stored
    reference: object  # the Keras model the file's outputs are held to
    inputs: list[np.ndarray]  # sample inputs for the output check
    notes: list[str]
    rounded: list[RoundedWeight] = dataclasses.field(default_factory=list)
    #: full_int8: the activation ranges were learned in training (not calibrated).
    trained_activations: bool = False
    #: `inputs` are the user's representative data (not random inputs).
    representative: bool = False
    #: The model's biases were moved onto the file's int32 grid (`align_biases`).
    biases_aligned: bool = False
    #: full_int8: converted from an unrolled copy (`sequence`) whose ranges are
    #: calibrated however the model trained (`agreement.Agreement.unrolled`).
    unrolled: bool = False


def _one_line(error: BaseException) -> str:
    """`Type: first line of the message` (converters raise many-line errors)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


@contextlib.contextmanager
def _failing(what: str, todo: str):
    """Any error of the block (not already an `ExportError`) becomes one whose
    first line says what failed and what to do."""
    try:
        yield
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{what} failed ({_one_line(e)}). {todo}") from e


_CONVERTER_TODO = (
    "Every operation of the model needs a TFLite builtin operator (the op named above "
    "has none): replace the layer that uses it, or move that step out of the model; "
    "rerun with verbose=True for the converter's own messages."
)
_RUN_TODO = "Rerun with verbose=True for the interpreter's messages, or try another format."


def _converted(fmt, plain, qat, rep, from_qat) -> tuple[bytes, bytes]:
    """`(file in the format, float file)`, straight from the converters."""
    # Recurrent and attention layers: unrolled, one sample per batch.
    plain = sequence.conversion_model(plain)
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


def _check_packable(items) -> None:
    """`tflm_packed` needs codebook weights of at most 128 values (`items`:
    `(layer, weight, codebook)` of each codebook weight)."""
    if not items:
        raise ExportError(
            "format='tflm_packed' stores codebook weights as indices, and this model has none "
            "(a plain float model, or no layer quantized to a codebook). Smallest format that "
            "fits: full_int8 for TFLM (int4 weight-only for LiteRT). Received: "
            "format='tflm_packed'"
        )
    for layer, weight, codebook in items:
        k = codebook.size
        if k > packed.MAX_VALUES:
            fits = "full_int8" if codebook.integer_step(127) is not None else "float"
            raise ExportError(
                f"Layer {layer!r} ({weight}): a codebook of {k} values needs "
                f"{codebook.bits}-bit indices; tflm_packed stores at most "
                f"{packed.MAX_BITS}-bit indices (K <= {packed.MAX_VALUES}). Smallest format "
                f"that fits: {fits}. Received: format='tflm_packed', K={k}"
            )


def convert_bytes(
    model,
    format="int8",
    representative_data=None,
    allow_inexact=False,
    safe_mode=True,
    progress: Progress | None = None,
) -> Conversion:
    """Converts without writing or checking outputs; see `export` for the arguments.

    Returns:
        A `Conversion`; for `tflm_packed`, of the `full_int8` file it is
        packed from.
    """
    steps = progress or Progress(False)
    fmt = convert.check_format(format)
    steps.stage("loading the model")
    plain, qat, from_keras3 = _prepare(model, safe_mode)
    if isinstance(plain, native.NativeModel):
        return _convert_native(plain, fmt, representative_data, allow_inexact, steps)
    requested = fmt
    if fmt == "tflm_packed":
        items = codebook_items(qat) if qat is not None else []
        _check_packable([(i.layer, i.weight, i.quantizer.codebook_of(i.qvars)) for i in items])
        fmt = "full_int8"  # packed by `export` once checked
    if fmt == "full_int8" and qat is not None:
        trained = {item.layer for item in codebook_items(qat) + int8_items(qat)}
        sequence.check_gather_tables(plain, trained)
    rep = inputs.representative(plain, representative_data)
    from_qat = fmt == "full_int8" and qat is not None and convert.has_activation_quantizers(qat)
    # Recurrent and attention layers are unrolled from the stripped model: its
    # activation ranges are calibrated, the QAT graph's learned ones cannot
    # follow. Not so for 8-bit recurrent states (`Int8LSTM`), which unroll
    # themselves, nor, for `unrolled` (the report's advice), for the tf_keras
    # LSTM and GRU that `activations="int8"` would make so.
    computed = recurrent.eight_bit_state(qat) if from_qat else set()
    calibrated_instead = from_qat and sequence.needs_preparation(plain, computed)
    from_qat = from_qat and not calibrated_instead
    if not from_qat and not from_keras3:
        computed = recurrent.eight_bit_state(plain, would=True)
    unrolled = fmt == "full_int8" and sequence.needs_preparation(plain, computed)
    if fmt == "full_int8" and rep is None and not from_qat:
        reason = (
            " (a model with recurrent, attention or TimeDistributed layers is converted "
            "from an unrolled copy of the stripped model, not from its QAT graph)"
            if calibrated_instead
            else ""
        )
        raise MissingDataError(
            f"format={requested!r} needs `representative_data` (an array of sample inputs, or "
            f"a generator of them) to calibrate activation ranges{reason}.",
            format=requested,
            reason=reason,
        )
    steps.stage(f"converting ({fmt})")
    with _failing(f"Converting the model to TFLite ({fmt})", _CONVERTER_TODO):
        out, float_bytes = _converted(fmt, plain, qat, rep, from_qat)
    float_size = len(float_bytes)
    steps.stage("finding the codebook weights")
    # Read from the QAT model only now: the converter's peak does not hold them.
    cws = exact.codebook_weights(qat) if qat is not None else []
    notes, matches = [], []
    if cws:
        fb = exact.read(out)
        matches = lattice.find_codebook_weights(fb, out, float_bytes, cws)
        del cws  # not held through patching and verifying
        # full_int8: int32 biases re-rounded from the float ones where a weight's step moves.
        floats = biases.float_biases(qat) if fmt == "full_int8" else None
        lattice.write_lattices(fb, matches, allow_inexact, notes, floats)
        out = exact.write(fb)
        del fb
    rounded = [] if fmt == "float" else lattice.rounded_weights(out, float_bytes, matches)
    del float_bytes
    if from_qat:
        notes.append("activation ranges: learned in training (activations='int8'), not calibrated")
    if calibrated_instead:
        notes.append(
            "activation ranges: calibrated on representative_data, not the ones learned in "
            "training (recurrent and attention layers convert from an unrolled copy)"
        )
    # Outputs are checked against what was trained: the QAT model itself when it
    # simulates int8 activations, else the stripped float model.
    return Conversion(
        data=out,
        float_size=float_size,
        matches=matches,
        reference=qat if from_qat else plain,
        inputs=rep if rep is not None else inputs.random_inputs(plain),
        notes=notes,
        rounded=rounded,
        trained_activations=from_qat,
        unrolled=unrolled,
        representative=rep is not None,
    )


def _convert_native(nm, fmt, representative_data, allow_inexact, steps) -> Conversion:
    """`convert_bytes` of a Keras 3 model that tf_keras cannot rebuild
    (`native`): its quantized weights read as data first, then converted."""
    cws = keras3.quantized_weights(nm.model)
    requested = fmt
    if fmt == "tflm_packed":
        _check_packable([(c.layer, c.weight, c.codebook) for c in cws if not c.trained_int8])
        fmt = "full_int8"
    if fmt == "full_int8":
        native.check_gather_tables(cws)
    rep = inputs.representative(nm, representative_data)
    free = native.free_inputs(nm)
    if free and rep is None:
        raise ExportError(
            f"Keras 3 model {nm.name!r} takes inputs of a free length ({', '.join(free)}); a "
            "file takes one shape. Pass `representative_data` (sample inputs of the length "
            "the file should take). Received: representative_data=None"
        )
    if free:
        nm = native.with_lengths(nm, rep)
    if fmt == "full_int8" and rep is None:
        raise MissingDataError(
            f"format={requested!r} needs `representative_data` (an array of sample inputs, or "
            "a generator of them) to calibrate activation ranges.",
            format=requested,
            reason="",
        )
    steps.stage(f"converting ({fmt}, from Keras 3)")
    with _failing(f"Converting the Keras 3 model to TFLite ({fmt})", _CONVERTER_TODO):
        samples = list(zip(*rep)) if rep is not None else None
        out, float_bytes = native.converted(nm, fmt, samples)
    notes, matches = [f"converted from Keras 3 as it is (not rebuilt in tf_keras: {nm.why})"], []
    steps.stage("finding the codebook weights")
    if cws:
        fb = exact.read(out)
        matches = lattice.find_codebook_weights(fb, out, float_bytes, cws)
        del cws
        lattice.write_lattices(fb, matches, allow_inexact, notes)
        out = exact.write(fb)
        del fb
    rounded = [] if fmt == "float" else lattice.rounded_weights(out, float_bytes, matches)
    return Conversion(
        data=out,
        float_size=len(float_bytes),
        matches=matches,
        reference=nm,
        inputs=rep if rep is not None else inputs.random_inputs(nm),
        notes=notes,
        rounded=rounded,
        representative=rep is not None,
    )


@dataclasses.dataclass
class _OutputCheck:
    max_abs_diff: float
    mean_abs_diff: float
    output_range: float
    tolerance: float | None
    agreement: agreement.Agreement | None = None


def _check_outputs(conv: Conversion, fmt, weights, allow_inexact) -> _OutputCheck:
    """LiteRT's outputs against the Keras model's, and the tolerance they are held to."""
    xs = conv.inputs
    with _failing("Running the Keras model on the sample inputs", _RUN_TODO):
        keras_out = np.asarray(
            conv.reference.predict(xs if len(xs) > 1 else xs[0], verbose=0), np.float64
        )
    with _failing("Running the converted file on LiteRT", _RUN_TODO):
        lite_out = runners.run_litert(conv.data, xs)[0].reshape(keras_out.shape)
    out_range = float(keras_out.max() - keras_out.min()) or 1.0
    tolerance = WEIGHT_ONLY_RTOL * out_range if fmt != "full_int8" else None
    if any(not w.exact for w in weights) and allow_inexact:
        # The weights differ from the trained ones on purpose: report only.
        tolerance = None
        conv.notes.append(f"outputs not held to {WEIGHT_ONLY_RTOL:g} of the range: inexact weights")
    uncovered = len(conv.rounded)
    if uncovered and tolerance is not None:
        # Float weights the tool rounded to its own integer grid: their error
        # is the format's, not ours to hold to the codebook tolerance.
        tolerance = None
        conv.notes.append(
            f"outputs reported only: {uncovered} weight tensor(s) without a codebook were "
            f"rounded to {fmt} by the converter"
        )
    diff = np.abs(lite_out - keras_out)
    agrees = None
    if fmt == "full_int8":
        agrees = agreement.measure(
            keras_out,
            lite_out,
            float(diff.max()),
            runners.output_scales(conv.data)[0],
            trained_activations=conv.trained_activations,
            real_data=conv.representative,
            biases_aligned=conv.biases_aligned,
            unrolled=conv.unrolled,
        )
    return _OutputCheck(float(diff.max()), float(diff.mean()), out_range, tolerance, agrees)


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
            "Pass target='litert' (--target litert) to verify the file on LiteRT only, "
            "for NPUs and phones; format='int8' keeps float activations."
        ) from None
    with _failing("Running the full_int8 file on LiteRT", _RUN_TODO):
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
        with _failing("Packing the codebook weights for TFLM", _RUN_TODO):
            data = packed.pack(full_int8, [m.tensor for m in codebook])
        report.weights = verify.check_packed_weights(data, full_int8, codebook) + kept
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


def _tflm_project(data: bytes, conv: Conversion, report: Report, given: bool, out):
    """The TFLM project of the file about to be written (`project.build`),
    with the arena already measured when the report has it."""
    measured = None
    if report.tflm is not None and report.format == "tflm_packed":
        measured = report.tflm.arena_bytes
    elif report.budget is not None:
        measured = report.budget.arena_bytes
    source = "representative_data" if given else "random inputs (no representative_data)"
    with _failing("Generating the TFLM project", _RUN_TODO):
        return project.build(data, conv.inputs, report.format, measured, source, out.name)


def export(
    model,
    path,
    format="int8",
    representative_data=None,
    allow_inexact=False,
    c_array=None,
    safe_mode=True,
    target="tflm",
    verbose=False,
    progress=None,
    flash=None,
    ram=None,
    pack=None,
    tflm_project=None,
    align_biases=False,
) -> Report:
    """Writes a verified `.tflite` file whose codebook weights are exact.

    Quiet by default: what TensorFlow, the converters and the interpreters
    print is captured and shown only with `verbose=True`, or at the end of
    the error's message when the export fails.

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
        target: `"tflm"` or `"litert"`: for `full_int8`, the interpreters the
            file is verified on. `"tflm"` runs it on TFLM and LiteRT and holds
            them to each other; `"litert"` on LiteRT only (NPUs, phones, or a
            model that TFLM cannot run), and the report says TFLM was skipped.
            Defaults to `"tflm"`.
        verbose: Show the libraries' own output, and a line per long stage.
            Defaults to `False`.
        progress: Print a line for each stage that lasts more than 2 s
            (`progress.AFTER_S`). Defaults to `verbose`.
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
        tflm_project: Also write a TFLM project into this folder (`full_int8`
            and `tflm_packed` with `target="tflm"`): the C array, an op
            resolver of exactly the file's operators, the arena and tensor
            settings, and a `main.cc` checking one sample against TFLM's
            Python interpreter (`tflite_export.project`). Defaults to `None`.
        align_biases: For a model trained with `activations="int8"`
            (`full_int8`, `tflm_packed`): move each bias of `model` onto the
            int32 grid the file stores it on (input step x weight step; a
            BatchNormalization's `beta` where one is folded into the layer),
            changing it by at most one step of that grid (a few thousandths of
            an output step), so that `model` computes the file's integers;
            the report's agreement is measured after the move, and a note
            says how many biases moved. `model`
            changes in place (back as it was if the export fails): save it
            after the export to keep the two together. Defaults to `False`.

    Returns:
        A `Report`.

    Raises:
        VerificationError: The file failed verification; nothing is written.
        ExportError: Anything else that stops the export (arguments, model,
            converter, quantizer, interpreter, file system); nothing is
            written then.
    """
    # The keyword arguments as given: what `_export` (here, or in the
    # TensorFlow child process of a JAX or PyTorch model) reads.
    arguments = {k: v for k, v in locals().items() if k not in ("model", "path")}
    if target not in TARGETS:
        raise ExportError(f"`target` must be one of {list(TARGETS)}. Received: target={target!r}")
    if target == "litert" and format == "tflm_packed":
        raise ExportError(
            "A tflm_packed file runs on TFLM only; target='litert' cannot verify it. "
            "Use format='full_int8' with target='litert'. Received: format='tflm_packed', "
            "target='litert'"
        )
    _check_align_biases(align_biases, model, format)
    budgets = budget.Budgets.of(format, flash, ram, pack)
    out = files.check_output_path(path, "path")
    if tflm_project is not None:
        project.check_request(format, target, tflm_project)
    if tfbackend.needs_child(model):
        # A JAX or PyTorch model that tf_keras cannot rebuild: exported under
        # TensorFlow, in a child process, from its saved file.
        return _warn_if_apart(tfbackend.export_in_child(model, out, arguments))
    show = verbose if progress is None else progress
    try:
        with library_logs(verbose) as captured:
            steps = Progress(bool(show))
            try:
                report = _export(model, out, arguments, steps, budgets)
            finally:
                steps.close()
    except ExportError as e:
        # The libraries' output explains a failure of theirs, not a failed check.
        if not verbose and not isinstance(e, VerificationError):
            e.log = without_startup_lines(captured.text)
        raise
    return _warn_if_apart(report)


def _check_align_biases(align_biases, model, fmt) -> None:
    """`align_biases=True` needs a full-integer format and the model object
    itself, in this process (it changes the model's biases)."""
    if not isinstance(align_biases, bool):
        raise ExportError(f"`align_biases` must be a bool. Received: align_biases={align_biases!r}")
    if not align_biases:
        return
    if fmt not in ("full_int8", "tflm_packed"):
        raise ExportError(
            "align_biases=True moves biases onto a full-integer file's int32 grid: use "
            f"format='full_int8' or 'tflm_packed'. Received: format={fmt!r}"
        )
    if isinstance(model, (str, os.PathLike)):
        raise ExportError(
            "align_biases=True changes the model's biases: pass the model itself, not "
            f"the path of a saved one. Received: model={os.fspath(model)!r}"
        )
    if tfbackend.needs_child(model):
        raise ExportError(
            "align_biases=True changes the model's biases in this process, but a JAX or "
            "PyTorch model is exported in a TensorFlow process. Load the saved model with "
            "KERAS_BACKEND=tensorflow and export that one with align_biases=True."
        )


def _align_biases(model, conv: Conversion):
    """Moves the biases of the model (and of its tf_keras twin, which the file
    is checked against) onto the file's int32 grid; notes what moved.

    Returns:
        A function that puts the biases back (when the export fails after).
    """
    if not conv.trained_activations:
        raise ExportError(
            "align_biases=True needs the file to keep activation ranges trained with "
            "the weights: quantize with `td.quantize_model(..., activations='int8')` (a "
            "model with recurrent or attention layers converts with calibrated ranges, "
            "which the model does not compute with)."
        )
    planned = biases.plan(conv.reference, conv.data, conv.matches)
    moves = [mv for mv in planned if mv.largest_move_in_steps <= biases.MAX_MOVE_STEPS]
    try:
        restore = biases.apply(moves, *{id(m): m for m in (conv.reference, model)}.values())
    except KeyError as e:
        raise ExportError(
            f"align_biases=True could not find a layer of the file's biases in the model "
            f"({e.args[0]}); export without align_biases."
        ) from None
    conv.biases_aligned = True
    largest = max((mv.largest_move_in_steps for mv in moves), default=0.0)
    note = (
        f"biases: {len(moves)} moved onto the file's int32 grid (align_biases=True; "
        f"largest move {largest:.2f} of a grid step)"
    )
    far = [
        f"{mv.layer}/{mv.weight} ({mv.largest_move_in_steps:.3g} steps away)"
        for mv in planned
        if mv.largest_move_in_steps > biases.MAX_MOVE_STEPS
    ]
    if far:
        note += "; left as they were, too far from the file's to be its rounding: " + ", ".join(far)
    conv.notes.append(note)
    return restore


def _warn_if_apart(report: Report) -> Report:
    """Warns (outside the libraries' captured output) when a full-integer
    file picks another class than Keras more often than its limit allows."""
    if not report.agrees:
        warnings.warn(report.agreement.advice(), agreement.AgreementWarning, stacklevel=3)
    return report


def _export(model, out, arguments: dict, steps, budgets) -> Report:
    """The export of `model` to `out` in this process; `arguments` are
    `export`'s (the budgets already read into `budgets`)."""
    conv = convert_bytes(
        model,
        arguments["format"],
        arguments["representative_data"],
        arguments["allow_inexact"],
        arguments["safe_mode"],
        steps,
    )
    if not arguments["align_biases"]:
        return _check_and_write(conv, out, arguments, steps, budgets)
    steps.stage("moving the biases onto the file's grid")
    restore = _align_biases(model, conv)
    try:
        return _check_and_write(conv, out, arguments, steps, budgets)
    except BaseException:
        restore()  # nothing written: the model stays as it came
        raise


def _check_and_write(conv: Conversion, out, arguments: dict, steps, budgets) -> Report:
    """Verifies `conv`, then writes its file (and what `arguments` ask for) to `out`."""
    fmt, target = arguments["format"], arguments["target"]
    representative_data, allow_inexact = (
        arguments["representative_data"],
        arguments["allow_inexact"],
    )
    c_array, tflm_project = arguments["c_array"], arguments["tflm_project"]
    pack = fmt == "tflm_packed"
    checked_as = "full_int8" if pack else fmt  # a packed file is checked as full_int8 first
    steps.stage("checking weights (LiteRT)")
    with _failing("Reading the converted file's weights with LiteRT", _RUN_TODO):
        weights = verify.check_weights(conv.data, conv.matches)
    steps.stage("comparing outputs (LiteRT)")
    outputs = _check_outputs(conv, checked_as, weights, allow_inexact)
    tflm_lsb = tflm_share = skipped = None
    tflm_layers = 1
    if checked_as == "full_int8" and target == "tflm":
        steps.stage("running TFLM")
        tflm_lsb, tflm_share, tflm_layers = _tflm_check(conv.data, conv.inputs)
    elif checked_as == "full_int8":
        skipped = "target='litert': the file was verified on LiteRT only"
    report = Report(
        path=str(out),
        format=checked_as,
        size_bytes=len(conv.data),
        float_size_bytes=conv.float_size,
        weights=weights,
        max_abs_diff=outputs.max_abs_diff,
        mean_abs_diff=outputs.mean_abs_diff,
        output_range=outputs.output_range,
        tolerance=outputs.tolerance,
        agreement=outputs.agreement,
        samples=len(conv.inputs[0]),
        tflm_max_lsb=tflm_lsb,
        tflm_share_differing=tflm_share,
        tflm_layers=tflm_layers,
        notes=conv.notes,
        target=target,
        tflm_skipped=skipped,
        rounded=conv.rounded,
    )
    data = conv.data
    if pack and report.ok:
        steps.stage("packing and running TFLM")
        data = _pack_and_check(report, conv.data, conv, budgets)
    inexact = any(not w.exact for w in report.weights)
    if not report.ok or (inexact and not allow_inexact):
        raise VerificationError(f"Verification failed; nothing written.\n{report}", report)
    if budgets.given:
        steps.stage("measuring against the budgets (TFLM)")
        report.budget = budget.measure(data, conv.data, conv.matches, conv.inputs, budgets, report)
        budget.check(report.budget)
    board = None
    if tflm_project is not None:
        steps.stage("generating the TFLM project (TFLM)")
        board = _tflm_project(data, conv, report, representative_data is not None, out)
    steps.stage("writing")
    try:
        files.atomic_write(out, data)
        if c_array is not None:
            report.c_array = micro.write_c_array(data, c_array)
        if board is not None:
            report.tflm_project = project.write(board, tflm_project)
            report.notes.append(board.summary())
    except OSError as e:
        raise ExportError(
            f"Writing {e.filename or str(out)!r} failed ({e.strerror or e}); nothing was "
            "written there. Choose a writable path."
        ) from e
    return report
