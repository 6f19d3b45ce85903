"""The quantized weights of a model, as `WeightItem`s, and checks on their values.

`summary`, `CodebookMonitor`, `plot_weights`, `strip_quantization` and the
TFLite export read a model's quantized weights through this module.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete import compat, int8
from tfmot_discrete.layers import DiscreteMultiplier
from tfmot_discrete.quantizers import CodebookQuantizer, weight_key

_QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapper


@dataclasses.dataclass(frozen=True, eq=False)
class WeightItem:
    """One quantized weight of a model.

    Attributes:
        layer: The name of the layer that owns the weight (the inner layer's
            name for a TF-MOT wrapper).
        weight: The weight's own name, e.g. `"kernel"`.
        latent: The latent (float) variable that training updates.
        quantizer: Its `CodebookQuantizer` or `int8.Int8WeightQuantizer`.
        qvars: The quantizer's variables (`{}` when it has none).
    """

    layer: str
    weight: str
    latent: object
    quantizer: object
    qvars: dict

    @property
    def label(self) -> str:
        """`"<layer>/<weight>"`, as tables and logs show it."""
        return f"{self.layer}/{self.weight}"


def wrapper_weights(wrapper) -> list:
    """`(weight, quantizer, quantizer variables)` of each weight a TF-MOT
    `QuantizeWrapperV2` quantizes, in the wrapper's order."""
    return compat.weight_vars(wrapper)


def _wrapper_items(layer, kind) -> list[WeightItem]:
    return [
        WeightItem(layer.layer.name, weight_key(latent), latent, q, qvars)
        for latent, q, qvars in wrapper_weights(layer)
        if isinstance(q, kind)
    ]


def codebook_items(model) -> list[WeightItem]:
    """One `WeightItem` per codebook weight of `model`, layer by layer.

    The `CodebookQuantizer` weights of every `QuantizeWrapperV2`, then the
    kernel of every built `DiscreteMultiplier`.

    Args:
        model: A model from `quantize_model`, or any model holding
            `DiscreteMultiplier` layers.

    Returns:
        A list of `WeightItem`s; empty when the model has no codebook weight.
    """
    out = []
    for layer in model.layers:
        if isinstance(layer, _QuantizeWrapper):
            out += _wrapper_items(layer, CodebookQuantizer)
        elif isinstance(layer, DiscreteMultiplier) and layer.built:
            out.append(
                WeightItem(
                    layer.name,
                    weight_key(layer.kernel),
                    layer.kernel,
                    layer.quantizer,
                    layer.quantizer_vars,
                )
            )
    return out


def int8_items(model) -> list[WeightItem]:
    """One `WeightItem` per weight trained at 8 bits (`"int8"` in the
    quantizer mapping), layer by layer."""
    out = []
    for layer in model.layers:
        if isinstance(layer, _QuantizeWrapper):
            out += _wrapper_items(layer, int8.Int8WeightQuantizer)
    return out


def is_quantized(model) -> bool:
    """True when `model` holds a TF-MOT wrapper or a `DiscreteMultiplier`."""
    return any(isinstance(layer, _QuantizeWrapper | DiscreteMultiplier) for layer in model.layers)


def _first_bad(value) -> tuple[int, tuple[int, ...], float] | None:
    """`(count, index of the first, its value)` of the non-finite entries, or None."""
    t = tf.convert_to_tensor(value)
    if not t.dtype.is_floating or bool(tf.reduce_all(tf.math.is_finite(t))):
        return None
    a = np.asarray(t)
    bad = ~np.isfinite(a)
    first = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
    return int(bad.sum()), first, float(a[first])


def _raise_if_non_finite(layer: str, weight: str, value, what: str) -> None:
    bad = _first_bad(value)
    if bad is not None:
        count, where, first = bad
        raise ValueError(
            f"Layer {layer!r}, weight {weight!r}: {count} {what} are NaN or inf (first {first} "
            f"at index {where}); training diverged or the weights were corrupted. Received: a "
            "model with non-finite weights"
        )


def check_finite(model) -> None:
    """Raises if a weight or a codebook scale of `model` is NaN or inf, or a
    codebook scale is zero or negative.

    `strip_quantization`, `summary` and the TFLite export call it, so a model
    whose training diverged is refused instead of being written with channels
    silently turned into one codebook value.

    Args:
        model: Any tf_keras model (QAT or plain).

    Raises:
        ValueError: Naming the layer, the weight and the first bad entry.
    """
    for item in codebook_items(model):
        _raise_if_non_finite(item.layer, item.weight, item.latent, "latent value(s)")
        q = item.quantizer
        if q.scale is None:
            continue
        scale = np.asarray(q.quantized_scale(item.latent, item.qvars), np.float64)
        wrong = ~np.isfinite(scale) | (scale <= 0)
        if np.any(wrong):
            where = tuple(int(i) for i in np.argwhere(wrong)[0])
            raise ValueError(
                f"Layer {item.layer!r}, weight {item.weight!r}: the "
                f"{q.scale} codebook scale of {int(wrong.sum())} channel(s) is zero, negative "
                f"or non-finite (first {float(scale[where])} at index {where}); a scale must be "
                "a finite positive number. Received: a model with a bad codebook scale"
            )
    for layer in model.layers:
        for w in layer.weights:
            _raise_if_non_finite(layer.name, weight_key(w), w, "value(s)")
