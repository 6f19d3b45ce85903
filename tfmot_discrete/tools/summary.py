"""`summary`: what each quantized layer stores, and how it uses its codebook."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmot_discrete.core import text
from tfmot_discrete.core.quantizers import INT8_QMAX, CodebookQuantizer, indices_of


@dataclasses.dataclass
class WeightReport:
    """One quantized weight of a layer."""

    layer: str
    weight: str
    codebook: np.ndarray
    scale: str
    count: int
    bits: int
    usage: np.ndarray  # share of weights at each codebook value
    #: Trained with 8-bit fake quantization ("int8" in the mapping); `codebook`
    #: is then the integers of [-127, 127].
    trained_int8: bool = False
    #: A kernel-like weight left float32 (`codebook` is empty, `bits` 32).
    stays_float: bool = False

    @property
    def bytes_packed(self) -> int:
        return (self.count * self.bits + 7) // 8

    @property
    def bytes_float(self) -> int:
        return self.count * 4


def codebook_indices(quantizer: CodebookQuantizer, latent, qvars) -> np.ndarray:
    """Index of the codebook value (learned or given) each weight projects to."""
    return indices_of(
        quantizer,
        quantizer(latent, False, weights=qvars),
        quantizer.quantized_scale(latent, qvars),
        quantizer.codebook_of(qvars),
    )


def value_shares(indices: np.ndarray, size: int) -> np.ndarray:
    """Share of the weights at each of the `size` codebook values.

    Example:

    >>> value_shares(np.array([0, 2, 2, 2]), 3).tolist()
    [0.25, 0.0, 0.75]
    """
    return np.bincount(indices.reshape(-1), minlength=size) / max(1, indices.size)


def weight_reports(model) -> list[WeightReport]:
    """One `WeightReport` per codebook-quantized weight of a tf_keras `model`."""
    # The tf_keras path's readers: TF-MOT loads only for a tf_keras model (the
    # table itself, `render`, serves the Keras 3 path too).
    from tfmot_discrete.tfk import int8  # noqa: PLC0415
    from tfmot_discrete.tfk.weights import check_finite, codebook_items, int8_items  # noqa: PLC0415

    check_finite(model)
    out = []
    for item in codebook_items(model):
        q = item.quantizer
        codes = codebook_indices(q, item.latent, item.qvars)
        usage = value_shares(codes, q.codebook.size)
        out.append(
            WeightReport(
                layer=item.layer,
                weight=item.weight,
                codebook=q.codebook_of(item.qvars).values,
                scale=str(q.scale) if q.scale else "none",
                count=int(codes.size),
                bits=q.codebook.bits,
                usage=usage,
            )
        )
    for item in int8_items(model):
        q = item.quantizer
        iv = int8.int8_values(q, item.latent, item.qvars)
        out.append(
            WeightReport(
                layer=item.layer,
                weight=item.weight,
                codebook=np.arange(-INT8_QMAX, INT8_QMAX + 1, dtype=np.float64),
                scale="per-channel" if q.per_axis else "per-tensor",
                count=int(iv.codes.size),
                bits=8,
                usage=np.zeros(0),
                trained_int8=True,
            )
        )
    return out


def float_reports(model) -> list[WeightReport]:
    """One `WeightReport` per kernel-like weight of `model` left float32
    (see `annotate.is_kernel_like`): layers `quantize_model` could not reach
    or was told to leave float."""
    from tfmot_discrete.tfk import annotate  # noqa: PLC0415

    return [
        float_report(layer, weight, variable.shape)
        for layer, weight, variable in annotate.float_weights_of(model)
    ]


def float_report(layer: str, weight: str, shape) -> WeightReport:
    """The row of a kernel-like weight that stays float32 (both paths' summaries)."""
    return WeightReport(
        layer=layer,
        weight=weight,
        codebook=np.zeros(0),
        scale="-",
        count=int(np.prod(shape)),
        bits=32,
        usage=np.zeros(0),
        stays_float=True,
    )


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def summary(model, print_fn=print) -> str:
    """Prints (and returns) a table of the model's codebook-quantized weights.

    Weights trained at 8 bits (`"int8"` in the quantizer mapping) are listed
    too, after the codebook weights, as `int8` at 8 bits per weight; then
    the kernel-like weights that stay float32 (codebook `float`, 32 bits),
    which the totals count too.

    Columns: layer/weight, codebook, scale mode, number of weights, bits per
    weight (`ceil(log2 K)`), memory at that width against float32, and the
    share of weights at each codebook value (in codebook order). Totals last.

    Args:
        model: A model from `quantize_model`, or any model holding
            `DiscreteMultiplier` layers.
        print_fn: Called with the whole table. Defaults to `print`.

    Returns:
        The table as a string.
    """
    return render(model.name, weight_reports(model) + float_reports(model), print_fn)


def render(model_name: str, reports: list[WeightReport], print_fn=print) -> str:
    """The table of `summary` for `reports` (both paths' summaries print it).

    Args:
        model_name: Named in the title.
        reports: The rows, in order.
        print_fn: Called with the whole table, unless None. Defaults to `print`.

    Returns:
        The table as a string.
    """
    header = [
        "layer/weight",
        "codebook",
        "scale",
        "weights",
        "bits",
        "memory",
        "float32",
        "value usage",
    ]
    rows = []
    for r in reports:
        rows.append(
            [
                f"{r.layer}/{r.weight}",
                "float"
                if r.stays_float
                else "int8"
                if r.trained_int8
                else text.format_values(r.codebook),
                r.scale,
                f"{r.count:,}",
                str(r.bits),
                _fmt_bytes(r.bytes_packed),
                _fmt_bytes(r.bytes_float),
                "-"
                if r.trained_int8 or r.stays_float
                else " ".join(f"{u:.0%}" for u in r.usage[: text.SHOWN_VALUES])
                + (" ..." if r.usage.size > text.SHOWN_VALUES else ""),
            ]
        )
    n = sum(r.count for r in reports)
    packed = sum(r.bytes_packed for r in reports)
    flt = sum(r.bytes_float for r in reports)
    ratio = f"{flt / packed:.1f}x smaller" if packed else ""
    total = [
        "total",
        "",
        "",
        f"{n:,}",
        f"{(8 * packed / n):.2f}" if n else "-",
        _fmt_bytes(packed),
        _fmt_bytes(flt),
        ratio,
    ]
    lines = text.table_lines([header, *rows, total])
    sep = "-" * len(lines[0])
    table = "\n".join(
        [f'Codebook summary of "{model_name}"', sep, lines[0], sep, *lines[1:-1], sep, lines[-1]]
    )
    if print_fn is not None:
        print_fn(table)
    return table
