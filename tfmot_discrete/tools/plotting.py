"""`plot_weights`: histograms of the latent weights, with the codebook drawn in."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from tfmot_discrete.tfk import is_keras3_object
from tfmot_discrete.tfk.weights import codebook_items


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "td.plot_weights needs matplotlib, an optional extra: "
            "`pip install 'tfmot-discrete[plot]'` (or `pip install matplotlib`)."
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _weights(model) -> list[tuple[str, object, np.ndarray, np.ndarray | None]]:
    """`(label, quantizer, latent values, scale or None)` per codebook weight,
    read on the model's Keras path."""
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415  (imports Keras 3)

        return [(w.label, w.quantizer, w.latent, w.scale) for w in k3.codebook_weights(model)]
    return [
        (
            item.label,
            item.quantizer,
            item.latent.numpy(),
            None
            if item.quantizer.scale is None
            else item.quantizer.quantized_scale(item.latent, item.qvars),
        )
        for item in codebook_items(model)
    ]


def _panel(label, q, latent, scale):
    """`(values to histogram, codebook line positions, title)` of one weight."""
    w = np.asarray(latent, np.float64)
    values = np.asarray(q.codebook.values, np.float64)
    if q.scale is None:
        return w.reshape(-1), values, f"{label}: latent weights (lines: codebook)"
    s = np.broadcast_to(np.asarray(scale, np.float64), w.shape)
    if np.unique(s).size == 1:
        return (
            w.reshape(-1),
            values * s.flat[0],
            f"{label}: latent weights (lines: codebook x scale {s.flat[0]:.3g})",
        )
    return (
        (w / s).reshape(-1),
        values,
        f"{label}: latent / channel scale (lines: codebook)",
    )


def plot_weights(model, path, bins=80) -> str:
    """Saves one histogram per codebook weight of `model` to an image file.

    Each panel shows the latent (float) weights that training updates, with
    a red line at each codebook value (where they are projected to) and a
    dashed line halfway between neighbours (where the projection switches).
    Without a scale the lines are the codebook itself; with one scale for the
    whole tensor, the codebook times that scale; with a scale per output
    channel (`"mean_abs"`, `"learned"`), each weight is divided by its
    channel's scale and the lines are the codebook values in those units.
    The panel title says which. Weights piled against the outer lines are
    clipped to the codebook range; a wide spread between lines means many
    weights sit near a decision boundary and may still flip.

    Needs matplotlib (`pip install 'tfmot-discrete[plot]'`); it is imported
    here, with the non-interactive Agg backend.

    Args:
        model: A model from `quantize_model` (tf_keras or Keras 3), or any
            model holding `DiscreteMultiplier` layers.
        path: The image file to write (`.png`, `.pdf`, `.svg`: any format
            matplotlib knows from the suffix).
        bins: Histogram bins per panel. Defaults to `80`.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: If the model has no codebook weight.
        ImportError: If matplotlib is not installed.
    """
    items = _weights(model)
    if not items:
        raise ValueError(
            f"Model {model.name!r} has no codebook weights to plot: pass a model from "
            "`td.quantize_model` or one with `DiscreteMultiplier` layers."
        )
    plt = _pyplot()
    n = len(items)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    try:
        for ax, item in zip(axes.flat, items):
            data, lines, title = _panel(*item)
            ax.hist(data, bins=bins, color="tab:blue", alpha=0.8)
            for x in lines:
                ax.axvline(x, color="tab:red", linewidth=1.2)
            for x in lines[:-1] + np.diff(lines) / 2:
                ax.axvline(x, color="tab:gray", linewidth=0.8, linestyle="--")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("value")
            ax.set_ylabel("weights")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"Latent weights of {model.name!r} and their codebooks", fontsize=11)
        fig.tight_layout()
        target = pathlib.Path(os.fspath(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=100)
    finally:
        plt.close(fig)
    return str(target)
