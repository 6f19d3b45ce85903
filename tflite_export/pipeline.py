"""`export`: QAT or plain Keras model -> verified, codebook-exact `.tflite` file."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import tempfile

import numpy as np

import tfmot_discrete as td
from tflite_export import convert, exact, packed, verify
from tflite_export.convert import ExportError
from tfmot_discrete.quantize import is_quantized

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
            cb = (
                "{"
                + ", ".join(f"{v:g}" for v in w.codebook[:6])
                + (", ...}" if len(w.codebook) > 6 else "}")
            )
            row = (
                w.name,
                cb,
                str(w.bits),
                w.storage,
                f"{w.count:,}",
                "exact" if w.exact else f"max error {w.max_error:.3g}",
            )
            if self.tflm is not None:
                table = "{" + ", ".join(str(int(v)) for v in w.table) + "}"
                row += (table if w.tables == 1 else f"{w.tables} tables, first {table}",)
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.path}  ({self.format})"]
        lines += ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
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
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _representative(model, data, what="representative_data") -> list[np.ndarray]:
    """Validates and materializes sample inputs as one array per model input."""
    specs = convert.input_specs(model)
    if data is None:
        return None
    if not isinstance(data, (np.ndarray, list, tuple)) and hasattr(data, "__iter__"):
        # A generator of samples, each an array or a list (one per input),
        # with or without a leading batch dimension of 1.
        samples = []
        for i, s in enumerate(data):
            if i >= 1000:
                break
            parts = list(s) if isinstance(s, (list, tuple)) else [s]
            fixed = []
            for part, (shape, _) in zip(parts, specs):
                a = np.asarray(part)
                fixed.append(a[0] if a.ndim == len(shape) and a.shape[0] == 1 else a)
            samples.append(fixed)
        if not samples:
            raise ExportError(f"`{what}` yielded no samples.")
        arrays = [np.stack([s[k] for s in samples]) for k in range(len(samples[0]))]
    elif isinstance(data, (list, tuple)) and len(specs) > 1:
        arrays = [np.asarray(a) for a in data]
    else:
        arrays = [np.asarray(data)]
    if len(arrays) != len(specs):
        raise ExportError(f"`{what}` has {len(arrays)} input arrays; the model takes {len(specs)}.")
    for a, (shape, _dtype) in zip(arrays, specs):
        want = tuple(shape[1:])
        if a.dtype.kind not in "biuf":
            raise ExportError(
                f"`{what}` must be numeric; received dtype {a.dtype}. Accepted: float or int "
                f"arrays of shape (N, {', '.join(str(d) for d in want)})."
            )
        if a.ndim != len(shape) or tuple(a.shape[1:]) != want or a.shape[0] == 0:
            raise ExportError(
                f"`{what}` has shape {tuple(a.shape)}; the model takes inputs of shape "
                f"(N, {', '.join(str(d) for d in want)}) with N >= 1."
            )
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ExportError(f"`{what}` holds NaN or inf values.")
    return [
        a.astype(np.dtype(dtype.name if hasattr(dtype, "name") else dtype))
        for a, (_, dtype) in zip(arrays, specs)
    ]


def _random_inputs(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for layer_shape, dtype in convert.input_specs(model):
        shape = (n, *layer_shape[1:])
        if dtype.is_integer:
            high = 2
            for layer in model.layers:
                if hasattr(layer, "input_dim"):
                    high = layer.input_dim
                    break
            out.append(rng.integers(0, high, size=shape).astype(dtype.as_numpy_dtype))
        else:
            out.append(rng.normal(size=shape).astype(np.float32))
    return out


def _prepare(model, safe_mode):
    if isinstance(model, (str, os.PathLike)):
        model = convert.load_model(model, safe_mode=safe_mode)
    if isinstance(model, bytes):
        raise ExportError("`model` must be a Keras model or a path; received bytes.")
    qat = model if is_quantized(model) else None
    plain = td.strip_quantization(model) if qat is not None else model
    for w in plain.weights:
        if w.dtype.is_floating and not np.all(np.isfinite(w.numpy())):
            raise ExportError(
                f"Weight {w.name!r} holds NaN or inf: the model cannot be exported. "
                "Received: model with non-finite weights"
            )
    cws = exact.codebook_weights(qat) if qat is not None else []
    return plain, cws, qat


def convert_bytes(
    model, format="int8", representative_data=None, allow_inexact=False, safe_mode=True
):
    """Converts without writing: `(bytes, float bytes, matches, reference
    model for the output check, sample inputs, notes)`. For `tflm_packed`,
    the `full_int8` bytes the packed file is made from."""
    fmt = convert.check_format(format)
    plain, cws, qat = _prepare(model, safe_mode)
    requested = fmt
    if fmt == "tflm_packed":
        _check_packable(cws)
        fmt = "full_int8"
    rep = _representative(plain, representative_data)
    from_qat = fmt == "full_int8" and qat is not None and convert.has_activation_quantizers(qat)
    if fmt == "full_int8" and rep is None and not from_qat:
        raise ExportError(
            f"format={requested!r} needs `representative_data` (an array of sample inputs, or "
            "a generator of them) to calibrate activation ranges."
        )
    float_bytes = convert.float_tflite(plain)
    if fmt == "float":
        out = float_bytes
    elif from_qat:
        # Trained with simulated int8 activations: keep the learned ranges.
        out = convert.full_int8_from_qat(qat)
    elif fmt == "full_int8":
        out = convert.full_int8_tflite(plain, zip(*rep))
    else:
        out = convert.weight_only_tflite(float_bytes, 8 if fmt == "int8" else 4)
    notes = []
    matches = []
    if cws:
        fb = exact.read(out)

        def tolerance_of(tensor, got):
            q = tensor.quantization
            if tensor.type in (9, 17) and q is not None and q.scale is not None and len(q.scale):
                return 0.51 * float(np.max(q.scale))
            return 1e-5 * max(1e-30, float(np.abs(got).max()))

        matches, missing = exact.match_weights(exact.read(float_bytes), cws)
        if not missing and out is not float_bytes:
            matches, missing = exact.locate(fb, matches, tolerance_of)
        if missing:
            raise ExportError(
                f"Could not find the codebook weights {missing} in the converted file; the "
                "converter rewrote them beyond a per-channel factor."
            )
        for m in matches:
            tensor = fb.subgraphs[0].tensors[m.tensor]
            if tensor.type not in (9, 17):
                continue
            qmax = 7 if tensor.type == 17 else 127
            g = m.cw.codebook.integer_step(qmax)
            if g is None:
                storage = exact.tensor_type_name(tensor)
                if not allow_inexact:
                    raise ExportError(
                        f"Layer {m.cw.layer!r} ({m.cw.weight}): codebook "
                        f"{[float(v) for v in m.cw.codebook.values]} has no exact {storage} "
                        f"lattice (no step makes every value an integer within ±{qmax}); "
                        f"smallest exact format: {exact.smallest_exact_format(m.cw.codebook)}. "
                        "Pass allow_inexact=True (--allow-inexact) to write it anyway."
                    )
                notes.append(f"{m.cw.label}: no exact {storage} lattice; written inexact")
                continue
            exact.write_exact(fb, m, g)
        out = exact.write(fb)
    sample_inputs = rep if rep is not None else _random_inputs(plain)
    if from_qat:
        notes.append("activation ranges: learned in training (activations='int8'), not calibrated")
    # Outputs are checked against what was trained: the QAT model itself when it
    # simulates int8 activations, else the stripped float model.
    reference = qat if from_qat else plain
    return out, float_bytes, matches, reference, sample_inputs, notes


def _check_packable(cws) -> None:
    """`tflm_packed` needs codebook weights of at most 128 values."""
    if not cws:
        raise ExportError(
            "format='tflm_packed' stores codebook weights as indices, and this model has none "
            "(a plain float model, or no layer quantized to a codebook). Smallest format that "
            "fits: full_int8 for TFLM (int4 weight-only for LiteRT). Received: "
            "format='tflm_packed'"
        )
    for cw in cws:
        k = len(cw.codebook.values)
        if k > packed.MAX_VALUES:
            fits = "full_int8" if cw.codebook.integer_step(127) is not None else "float"
            raise ExportError(
                f"Layer {cw.layer!r} ({cw.weight}): a codebook of {k} values needs "
                f"{cw.codebook.bits}-bit indices; tflm_packed stores at most "
                f"{packed.MAX_BITS}-bit indices (K <= {packed.MAX_VALUES}). Smallest format "
                f"that fits: {fits}. Received: format='tflm_packed', K={k}"
            )


def check_weights(model_bytes: bytes, matches) -> list[verify.WeightCheck]:
    """Reads the file back with LiteRT; each codebook weight vs its trained value."""
    fb = exact.read(model_bytes)
    values = verify.litert_weights(verify.interpreter(model_bytes), [m.tensor for m in matches])
    out = []
    for m in matches:
        tensor = fb.subgraphs[0].tensors[m.tensor]
        v = values.get(m.tensor)
        if v is None:
            v = exact.dequantize(fb, tensor)
        v = v.reshape(m.reference.shape)
        err = float(np.abs(v - m.reference).max())
        units = exact._expand(np.where(m.units == 0, 1.0, m.units), v.ndim, m.channel_dim)  # noqa: SLF001
        codes = v / units
        dev = float(np.abs(codes - m.codes).max()) / max(1.0, m.cw.codebook.max_abs)
        out.append(
            verify.WeightCheck(
                name=m.cw.label,
                codebook=m.cw.codebook.values,
                bits=m.cw.codebook.bits,
                storage=exact.tensor_type_name(tensor),
                count=int(v.size),
                exact=dev <= 1e-5,
                max_error=err,
            )
        )
    return out


def _integer_weights_without_codebook(model_bytes: bytes, matches) -> int:
    """How many int4/int8 weight tensors of the file hold no codebook weight."""
    fb = exact.read(model_bytes)
    ours = {m.tensor for m in matches}
    return sum(
        1
        for _, t in exact.weight_tensors(fb)
        if t not in ours and fb.subgraphs[0].tensors[t].type in (9, 17)
    )


def run_tflm(model_bytes: bytes, inputs: list[np.ndarray]):
    """Outputs of the TFLM interpreter, raw int8, one sample at a time."""
    from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415

    it = runtime.Interpreter.from_bytes(model_bytes)
    lite = verify.interpreter(model_bytes)
    ins = lite.get_input_details()
    outs = []
    for i in range(len(inputs[0])):
        for k, (d, x) in enumerate(zip(ins, inputs)):
            it.set_input(verify.quantize_input(d, x[i : i + 1]), k)
        it.invoke()
        outs.append(np.asarray(it.get_output(0)))
    return np.concatenate(outs, axis=0)


def run_litert_raw(model_bytes: bytes, inputs: list[np.ndarray]):
    lite = verify.interpreter(model_bytes)
    ins, out_d = lite.get_input_details(), lite.get_output_details()[0]
    outs = []
    for i in range(len(inputs[0])):
        for d, x in zip(ins, inputs):
            lite.set_tensor(d["index"], verify.quantize_input(d, x[i : i + 1]))
        lite.invoke()
        outs.append(lite.get_tensor(out_d["index"]).copy())
    return np.concatenate(outs, axis=0)


def _pack_and_check(report: Report, full_int8: bytes, matches, inputs) -> bytes:
    """Packs a checked full_int8 file; `report` then describes the packed file."""
    try:
        data = packed.pack(full_int8, [m.tensor for m in matches])
        report.weights = packed.check_weights(data, full_int8, matches)
    except packed.PackedFileError as e:
        raise ExportError(f"Cannot pack the codebook weights: {e} Nothing written.") from e
    report.tflm = packed.compare_on_tflm(data, full_int8, inputs)
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
            of samples; required for `full_int8` and `tflm_packed` (unless
            trained with `activations="int8"`), also used for the output
            check (random inputs otherwise).
        allow_inexact: Write a codebook with no exact integer lattice anyway,
            reporting the max error. Defaults to `False`.
        c_array: Also write a C source file (and header) for TFLM.
        safe_mode: Keras safe mode when loading a `.keras` file.

    Returns:
        A `Report`.

    Raises:
        ExportError: Bad arguments, a codebook with no exact lattice, or a file
            that fails verification; nothing is written then.
    """
    target = pathlib.Path(os.fspath(path))
    if target.is_dir():
        raise ExportError(f"`path` is a directory. Received: path={str(target)!r}")
    data, float_bytes, matches, plain, inputs, notes = convert_bytes(
        model, format, representative_data, allow_inexact, safe_mode
    )
    pack = format == "tflm_packed"
    if pack:
        format = "full_int8"  # checked as such first, then packed
    weights = check_weights(data, matches)
    keras_out = np.asarray(
        plain.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0), np.float64
    )
    lite_out = verify.run_litert(data, inputs)[0].reshape(keras_out.shape)
    diff = float(np.abs(lite_out - keras_out).max())
    out_range = float(keras_out.max() - keras_out.min()) or 1.0
    inexact = [w.name for w in weights if not w.exact]
    tolerance = WEIGHT_ONLY_RTOL * out_range if format != "full_int8" else None
    if inexact and allow_inexact:
        # The weights differ from the trained ones on purpose: report only.
        tolerance = None
        notes.append(f"outputs not held to {WEIGHT_ONLY_RTOL:g} of the range: inexact weights")
    uncovered = _integer_weights_without_codebook(data, matches)
    if uncovered and tolerance is not None:
        # Float weights the tool rounded to its own integer grid: their error
        # is the format's, not ours to hold to the codebook tolerance.
        tolerance = None
        notes.append(
            f"outputs reported only: {uncovered} weight tensor(s) without a codebook were "
            f"rounded to {format} by the converter"
        )
    tflm_lsb = tflm_share = None
    tflm_layers = 1
    if format == "full_int8":
        refusal = packed.tflm_refusal(data)
        if refusal is not None:
            raise ExportError(f"{refusal} Nothing written.")
        d = np.abs(
            run_tflm(data, inputs).astype(np.int32) - run_litert_raw(data, inputs).astype(np.int32)
        )
        tflm_lsb, tflm_share = int(d.max()), float((d > 0).mean())
        tflm_layers = max(1, len(exact.weight_tensors(exact.read(data))))
    report = Report(
        path=str(target),
        format=format,
        size_bytes=len(data),
        float_size_bytes=len(float_bytes),
        weights=weights,
        max_abs_diff=diff,
        mean_abs_diff=float(np.abs(lite_out - keras_out).mean()),
        output_range=out_range,
        tolerance=tolerance,
        samples=len(inputs[0]),
        tflm_max_lsb=tflm_lsb,
        tflm_share_differing=tflm_share,
        tflm_layers=tflm_layers,
        notes=notes,
    )
    if pack and report.ok:
        data = _pack_and_check(report, data, matches, inputs)
    if not report.ok or (not report.exact and not allow_inexact):
        raise ExportError(f"Verification failed; nothing written.\n{report}")
    _atomic_write(target, data)
    if c_array is not None:
        from tflite_export import micro  # noqa: PLC0415

        report.c_array = micro.write_c_array(data, c_array)
    return report
