"""The finiteness and scale check both paths run before a model is stripped,
summarized or exported, on NumPy values.

A model whose training diverged is refused, naming the layer, the weight and
the first bad entry, instead of being written with channels silently turned
into one codebook value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np


class CodebookWeightValues(NamedTuple):
    """One codebook weight to check: where it is, its latent values, its
    quantizer's `scale` option and a function giving the scale it projects
    with (called only when the quantizer has a scale)."""

    layer: str
    weight: str
    latent: object
    scale_kind: str | None
    scale: Callable[[], np.ndarray]


def first_bad(value) -> tuple[int, tuple[int, ...], float] | None:
    """`(count, index of the first, its value)` of the non-finite entries of a
    float array, or None (also for a non-float array).

    Example:

    >>> first_bad(np.array([1.0, np.nan, np.inf]))
    (2, (1,), nan)
    """
    a = np.asarray(value)
    if not np.issubdtype(a.dtype, np.floating) or np.isfinite(a).all():
        return None
    bad = ~np.isfinite(a)
    first = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
    return int(bad.sum()), first, float(a[first])


def raise_if_non_finite(layer: str, weight: str, value, what: str, bad=None) -> None:
    """Raises `ValueError` when `value` holds NaN or inf (`bad`: its `first_bad`,
    when the caller found it another way)."""
    bad = first_bad(value) if bad is None else bad
    if bad is not None:
        count, where, first = bad
        raise ValueError(
            f"Layer {layer!r}, weight {weight!r}: {count} {what} are NaN or inf (first {first} "
            f"at index {where}); training diverged or the weights were corrupted. Received: a "
            "model with non-finite weights"
        )


def raise_if_bad_scale(layer: str, weight: str, scale_kind: str, scale) -> None:
    """Raises `ValueError` unless every channel's scale is finite and positive."""
    scale = np.asarray(scale, np.float64)
    wrong = ~np.isfinite(scale) | (scale <= 0)
    if np.any(wrong):
        where = tuple(int(i) for i in np.argwhere(wrong)[0])
        raise ValueError(
            f"Layer {layer!r}, weight {weight!r}: the "
            f"{scale_kind} codebook scale of {int(wrong.sum())} channel(s) is zero, negative "
            f"or non-finite (first {float(scale[where])} at index {where}); a scale must be "
            "a finite positive number. Received: a model with a bad codebook scale"
        )


def check_finite(
    codebook_weights: Iterable[CodebookWeightValues],
    weights: Iterable[tuple[str, str, object]],
    non_finite=raise_if_non_finite,
) -> None:
    """Raises if a codebook weight or its scale, or any weight, is NaN or inf,
    or a codebook scale is zero or negative.

    Args:
        codebook_weights: The model's codebook weights.
        weights: `(layer, weight, values)` of every weight of the model.
        non_finite: `non_finite(layer, weight, value, what)` raising for a
            non-finite value; a path passes its own to test values where they
            are (on the device) before copying them. Defaults to
            `raise_if_non_finite` (NumPy).

    Raises:
        ValueError: Naming the layer, the weight and the first bad entry.
    """
    for item in codebook_weights:
        non_finite(item.layer, item.weight, item.latent, "latent value(s)")
        if item.scale_kind is not None:
            raise_if_bad_scale(item.layer, item.weight, item.scale_kind, item.scale())
    for layer, weight, value in weights:
        non_finite(layer, weight, value, "value(s)")
