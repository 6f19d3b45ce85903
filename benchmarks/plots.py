"""PNG plots: accuracy against bits per weight, and latent-weight histograms."""

from __future__ import annotations

import pathlib

import numpy as np

from benchmarks import accuracy, common


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def accuracy_vs_bits(result: dict, path: pathlib.Path) -> pathlib.Path:
    """One panel per dataset: each variant a point (mean ± std), float a line."""
    plt = _pyplot()
    variants = {v.name: v for v in common.accuracy_variants()}
    tasks = list(result["data"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    order = {name: i for i, name in enumerate(variants)}
    for ax, task in zip(axes[0], tasks):
        by = accuracy.records_by_variant(result["records"], task)
        for name, recs in by.items():
            m, s = common.mean_std([100 * r.accuracy for r in recs])
            v = variants[name]
            if v.kind == "float":
                ax.axhline(m, color="black", lw=1, label=f"float ({m:.1f} %)")
                continue
            marker = {"ours": "o", "map": "x", "cluster": "s", "tfmot_qat": "^"}[v.kind]
            x = v.bits * 2 ** (0.03 * (order[name] % 7 - 3))  # spread equal bit counts
            color = colors[order[name] % len(colors)]
            ax.errorbar(x, m, yerr=s, fmt=marker, color=color, capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 3, 8])
        ax.set_xticklabels(["1", "2", "3", "8"])
        ax.set_xlabel("bits per weight (ceil(log2 K))")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(accuracy.TASKS[task].title.split(",")[0])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latent_kernel(model, layer_name: str) -> np.ndarray | None:
    """The latent (trained, unprojected) kernel variable of a wrapped layer."""
    for layer in model.layers:
        if getattr(layer, "layer", layer).name != layer_name:
            continue
        for w in layer.trainable_weights:
            if w.name.split("/")[-1].startswith("kernel:"):
                return np.asarray(w.numpy()).reshape(-1)
    return None


def latent_histograms(result: dict, path: pathlib.Path) -> pathlib.Path | None:
    """Latent weights of `dense_1` (digits) after training, codebook values drawn in."""
    plt = _pyplot()
    variants = {v.name: v for v in common.accuracy_variants()}
    panels = []
    for name in ("binary, scale=None", "[1, -1, 0.5, -0.5]"):
        model = result["models"].get(("digits", name))
        if model is None:
            continue
        w = _latent_kernel(model, "dense_1")
        if w is not None:
            panels.append((name, w, common.codebook_of(variants[name]).values))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, w, values) in zip(axes[0], panels):
        ax.hist(w, bins=120, color="tab:blue", alpha=0.8)
        for c in values:
            ax.axvline(c, color="tab:red", lw=1.5)
        mids = (values[1:] + values[:-1]) / 2
        for m in mids:
            ax.axvline(m, color="gray", lw=0.8, ls="--")
        ax.set_title(f"digits dense_1 latent weights: {name}\n(red: codebook, dashed: midpoints)")
        ax.set_xlabel("latent weight")
        ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
