"""`summary` for Keras 3 models: the table of `tools.summary`, read natively.

The rows are the weights `quantize.items` finds anywhere in the layer tree
(codebook weights, then 8-bit ones), then the kernel-like weights that stay
float; the table is the tf_keras path's (`tools.summary.render`). Nothing is
rebuilt in tf_keras, so custom and KerasHub layers are read as they are.
"""

from __future__ import annotations

import numpy as np

from tfmot_discrete.core.quantizers import INT8_QMAX, CodebookQuantizer
from tfmot_discrete.keras3 import keras, reach, tree
from tfmot_discrete.keras3 import quantize as k3
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.tools.summary import (
    WeightReport,
    float_report,
    indices_of,
    render,
    value_shares,
)


def _check_finite(label, latent):
    if not np.all(np.isfinite(latent)):
        raise ValueError(
            f"Weight {label!r} holds NaN or inf values; training diverged or the weights were "
            "corrupted. Received: a model with non-finite weights"
        )


def weight_reports(model) -> list[WeightReport]:
    """One `WeightReport` per quantized weight of a Keras 3 model, named
    `"<layer label>/<weight>"` as `quantize.items` labels them."""
    coded, eight = [], []
    for label, weight, var, state in k3.items(model):
        q = state.quantizer
        latent = keras.ops.convert_to_numpy(var.value)
        _check_finite(f"{label}/{weight}", latent)
        if isinstance(q, CodebookQuantizer):
            codebook = q.codebook_of(state.variables)  # learned values or the given ones
            codes = indices_of(
                q, k3.projected(state, latent), k3q.scale_of(state, latent), codebook
            )
            coded.append(
                WeightReport(
                    layer=label,
                    weight=weight,
                    codebook=codebook.values,
                    scale=str(q.scale) if q.scale else "none",
                    count=int(codes.size),
                    bits=q.codebook.bits,
                    usage=value_shares(codes, q.codebook.size),
                )
            )
        else:
            eight.append(
                WeightReport(
                    layer=label,
                    weight=weight,
                    codebook=np.arange(-INT8_QMAX, INT8_QMAX + 1, dtype=np.float64),
                    scale="per-channel" if q.per_axis else "per-tensor",
                    count=int(latent.size),
                    bits=8,
                    usage=np.zeros(0),
                    trained_int8=True,
                )
            )
    return coded + eight


def float_reports(model) -> list[WeightReport]:
    """One `WeightReport` per kernel-like weight left float32, anywhere in the
    tree: `<layer path>/<attribute>` (the attribute holding it, as the
    float-weight notice names it; else the variable's own path)."""
    quantized = set()
    for _, _, var, state in k3.items(model):
        quantized.add(id(var))
        quantized.update(id(v) for v in state.variables.values())
    holders = {}
    for place in [tree.Place(None, model, ""), *reach.places(model, graph=False)]:
        for key, name in reach.attribute_names(place.layer).items():
            holders.setdefault(key, (place, name))
    out = []
    for w in model.weights:
        if id(w) in quantized or not reach.is_kernel_like(w):
            continue
        if id(w) in holders:
            place, weight = holders[id(w)]
            layer = place.path or model.name
        else:
            layer, _, weight = reach.relative_path(w, model).rpartition("/")
        out.append(float_report(layer or model.name, weight, w.shape))
    return out


def summary(model, print_fn=print) -> str:
    """`td.summary` of a Keras 3 model of any class (see `tools.summary.summary`).

    Raises:
        ValueError: For a weight holding NaN or inf.
    """
    k3.check_model(model)
    return render(model.name, weight_reports(model) + float_reports(model), print_fn)
