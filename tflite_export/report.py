"""`Report`: what `export` wrote and what it checked, as text and as data."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata

from tflite_export import files
from tflite_export.agreement import Agreement
from tflite_export.budget import BudgetReport
from tflite_export.packed import TflmComparison
from tflite_export.verify import WeightCheck, json_number
from tfmot_discrete.core import text

#: TFLM and LiteRT may round differently by this many int8 steps per
#: requantizing layer (their kernels round differently); the differences add
#: up through a chain of layers.
TFLM_LSB = 2
#: The state of a report without codebook weights, in words.
NO_CODEBOOK = (
    "no codebook weights found: a float model, or a stripped one; export the QAT model "
    "to check its codebook"
)
#: Distributions whose versions a report records.
TOOLS = (
    "tfmot-discrete",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "tflite-micro",
)


@functools.cache
def tool_versions() -> dict[str, str | None]:
    """`{distribution: version}` of the tools that write and check files."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclasses.dataclass
class RoundedWeight:
    """A float weight (no codebook) that the converter rounded to integers."""

    name: str
    storage: str  # int8 / int4
    count: int
    max_error: float | None  # max |stored - float value|; None: not found in the float file


def size_words(size: int, reference: int) -> str:
    """`"3.20x smaller"` or `"1.14x larger"`: `size` against `reference`.

    Example:

    >>> size_words(100, 320), size_words(114, 100), size_words(5, 5)
    ('3.20x smaller', '1.14x larger', 'the same size')
    """
    if size == reference:
        return "the same size"
    if size < reference:
        return f"{reference / max(1, size):.2f}x smaller"
    return f"{size / max(1, reference):.2f}x larger"


@dataclasses.dataclass
class Report:
    """What `export` wrote and what it checked.

    `exact` is true only when codebook weights were found and every one of
    them decodes to its trained value; `status` names the third case, no
    codebook weights at all. `ok` is the outputs' verdict (LiteRT against
    Keras, TFLM against LiteRT, a packed file against its `full_int8` file).
    """

    path: str
    format: str
    size_bytes: int
    float_size_bytes: int
    weights: list[WeightCheck]
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
    tflm: TflmComparison | None = None  # tflm_packed: both files on TFLM
    target: str = "tflm"  # full_int8: "tflm" (TFLM and LiteRT) or "litert" (LiteRT only)
    tflm_skipped: str | None = None  # full_int8: why TFLM did not run the file
    rounded: list[RoundedWeight] = dataclasses.field(default_factory=list)
    budget: BudgetReport | None = None  # flash / ram given: the file against them
    tflm_project: str | None = None  # the TFLM project folder written from the file
    agreement: Agreement | None = None  # full-integer files: top-1 agreement with Keras

    @property
    def checked(self) -> int:
        """How many codebook (and `"int8"`) weights were checked."""
        return len(self.weights)

    @property
    def exact(self) -> bool:
        """Codebook weights were found and every one is exact."""
        return bool(self.weights) and all(w.exact for w in self.weights)

    @property
    def status(self) -> str:
        """`"exact"`, `"inexact"` or `"no codebook weights"`."""
        if not self.weights:
            return "no codebook weights"
        return "exact" if self.exact else "inexact"

    @property
    def outputs_agree(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance

    @property
    def tflm_agrees(self) -> bool:
        return self.tflm_max_lsb is None or self.tflm_max_lsb <= TFLM_LSB * self.tflm_layers

    @property
    def top1_agreement(self) -> float | None:
        """Full-integer files with class outputs: the share of check inputs
        whose top-1 class is the Keras model's (`None` otherwise)."""
        return None if self.agreement is None else self.agreement.top1

    @property
    def agrees(self) -> bool:
        """Full-integer files: the top-1 agreement is within its limit
        (`agreement.limit`); true for other formats."""
        return self.agreement is None or self.agreement.within

    @property
    def ok(self) -> bool:
        packed_ok = self.tflm is None or self.tflm.identical
        return self.outputs_agree and self.tflm_agrees and packed_ok

    @property
    def size_ratio(self) -> float:
        """Float file size over this file's size (above 1: smaller than float)."""
        return self.float_size_bytes / max(1, self.size_bytes)

    def _weight_row(self, w: WeightCheck) -> tuple:
        row = (
            w.name,
            "int8 (trained)" if w.trained_int8 else text.format_values(w.codebook),
            str(w.bits),
            w.storage,
            f"{w.count:,}",
            "exact" if w.exact else f"max error {w.max_error:.3g}",
        )
        if self.tflm is not None:
            if w.table is None:
                row += ("(not packed)",)
            else:
                table = "{" + ", ".join(str(int(v)) for v in w.table) + "}"
                row += (table if w.tables == 1 else f"{w.tables} tables, first {table}",)
        return row

    def __str__(self) -> str:
        lines = [f"{self.path}  ({self.format})"]
        if self.weights:
            rows = [("weight", "codebook", "bits", "stored", "weights", "exact / max error")]
            if self.tflm is not None:
                rows[0] += ("int8 value table",)
            rows += [self._weight_row(w) for w in self.weights]
            lines += text.table_lines(rows)
            n = sum(w.count for w in self.weights)
            stored = sum(w.count * w.stored_bits for w in self.weights) / n
            needed = sum(w.count * w.bits for w in self.weights) / n
            lines.append(
                f"bits per weight: {stored:.2f} stored, {needed:.2f} needed (ceil(log2 K)), 32 float"
            )
            exact = sum(w.exact for w in self.weights)
            lines.append(f"codebook weights checked: {self.checked}, exact: {exact}")
        else:
            lines.append(NO_CODEBOOK)
        for r in self.rounded:
            err = "not measured" if r.max_error is None else f"max error {r.max_error:.3g}"
            lines.append(
                f"rounded by the converter (no codebook): {r.name}, {r.storage}, "
                f"{r.count:,} weights, {err}"
            )
        lines.append(
            f"file size: {self.size_bytes:,} bytes; float file {self.float_size_bytes:,} bytes "
            f"({size_words(self.size_bytes, self.float_size_bytes)})"
        )
        if self.full_int8_size_bytes is not None:
            lines[-1] += (
                f"; full_int8 file {self.full_int8_size_bytes:,} bytes "
                f"({size_words(self.size_bytes, self.full_int8_size_bytes)})"
            )
        rel = self.max_abs_diff / self.output_range if self.output_range else 0.0
        tol = f"<= {self.tolerance:.3g} required" if self.tolerance is not None else "reported only"
        lines.append(
            f"outputs vs Keras on {self.samples} inputs: max abs diff {self.max_abs_diff:.3g}, "
            f"mean {self.mean_abs_diff:.3g} "
            f"({rel:.2e} of output range {self.output_range:.3g}; {tol})"
        )
        if self.agreement is not None:
            lines.append(self.agreement.line())
        if self.tflm_max_lsb is not None:
            lines.append(
                f"TFLM vs LiteRT on the same int8 inputs: max difference {self.tflm_max_lsb} LSB, "
                f"{100 * (self.tflm_share_differing or 0):.2f} % of outputs differ "
                f"(<= {TFLM_LSB} LSB x {self.tflm_layers} requantizing layers accepted)"
            )
        if self.tflm_skipped:
            lines.append(f"TFLM: not run ({self.tflm_skipped})")
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
        if self.tflm_project:
            lines.append(f"TFLM project: {self.tflm_project}")
        lines += self.notes
        if self.budget is not None:
            lines.append(str(self.budget))
        if not self.ok:
            lines.append("FAILED")
        else:
            lines.append("OK" if self.agrees else self.agreement.advice())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-serializable data (plain dicts, lists, numbers, strings).

        Keys: `path`, `format`, `target`, `ok`, `exact`, `status`, `checked`,
        `sizes`, `weights` (one per codebook weight), `rounded`, `outputs`
        (with `top1_agreement` and, for full-integer files, `agreement`),
        `tflm`, `c_array`, `tflm_project`, `notes`, `versions`.
        """
        t = self.tflm
        return {
            "path": self.path,
            "format": self.format,
            "target": self.target,
            "ok": self.ok,
            "exact": self.exact,
            "status": self.status,
            "checked": self.checked,
            "sizes": {
                "file_bytes": self.size_bytes,
                "float_file_bytes": self.float_size_bytes,
                "full_int8_file_bytes": self.full_int8_size_bytes,
                "float_over_file": json_number(self.size_ratio),
            },
            "weights": [w.to_dict() for w in self.weights],
            "rounded": [dataclasses.asdict(r) for r in self.rounded],
            "outputs": {
                "samples": int(self.samples),
                "max_abs_diff": json_number(self.max_abs_diff),
                "mean_abs_diff": json_number(self.mean_abs_diff),
                "output_range": json_number(self.output_range),
                "tolerance": json_number(self.tolerance),
                "agree": self.outputs_agree,
                "top1_agreement": json_number(self.top1_agreement),
                "agreement": None if self.agreement is None else self.agreement.to_dict(),
            },
            "tflm": {
                "ran": self.tflm_max_lsb is not None or t is not None,
                "skipped": self.tflm_skipped,
                "max_lsb_vs_litert": self.tflm_max_lsb,
                "share_differing": json_number(self.tflm_share_differing),
                "requantizing_layers": self.tflm_layers,
                "packed_vs_full_int8": None
                if t is None
                else {
                    "samples": t.samples,
                    "max_lsb": t.max_lsb,
                    "arena_bytes": t.arena_bytes,
                    "full_int8_arena_bytes": t.full_int8_arena_bytes,
                    "latency_s": json_number(t.latency_s),
                    "full_int8_latency_s": json_number(t.full_int8_latency_s),
                },
            },
            "c_array": self.c_array,
            "tflm_project": self.tflm_project,
            "notes": list(self.notes),
            "budget": None if self.budget is None else dataclasses.asdict(self.budget),
            "versions": dict(tool_versions()),
        }

    def to_json(self, path=None) -> str:
        """The report as JSON text; also written to `path` when given (atomically).

        Raises:
            ExportError: When `path` cannot be written.
        """
        return files.write_json(self.to_dict(), path, "report")
