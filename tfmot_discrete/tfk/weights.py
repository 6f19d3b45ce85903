"""The quantized weights of a model, as `WeightItem`s, checks on their values,
and the warnings `quantize_model` gives about them.

`summary`, `CodebookMonitor`, `plot_weights`, `strip_quantization` and the
TFLite export read a model's quantized weights through this module.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import checks, text
from tfmot_discrete.core.rules import QuantizationWarning
from tfmot_discrete.tfk import compat, configs, int8, rescale
from tfmot_discrete.tfk.layers import DiscreteMultiplier
from tfmot_discrete.tfk.quantizers import CodebookQuantizer, weight_key

_QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapper


#: Weights are counted this many at a time.
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class WeightItem:
    """One quantized weight of a model.

    Attributes:
        layer: The name of the layer that owns the weight (the inner layer's
            name for a TF-MOT wrapper).
        weight: The weight's name in the layer, e.g. `"kernel"`; for weights a
            cell or sub-layer holds, its `configs.weight_specs` name, which
            may hold `/` (`"query/kernel"`, `"forward/recurrent_kernel"`).
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


def wrapper_weight_names(wrapper) -> list[str]:
    """The name of each weight of `wrapper_weights(wrapper)`: its name in
    `configs.weight_specs` (`"kernel"`, `"recurrent_kernel"`, `"query/kernel"`)
    under a `DiscreteQuantizeConfig`, else the variable's own name."""
    config = wrapper.quantize_config
    if isinstance(config, configs.DiscreteQuantizeConfig):
        return config.weight_names(wrapper.layer)
    return [weight_key(w) for w, _, _ in wrapper_weights(wrapper)]


def _wrapper_items(layer, kind) -> list[WeightItem]:
    names = wrapper_weight_names(layer)
    return [
        WeightItem(layer.layer.name, name, latent, q, qvars)
        for name, (latent, q, qvars) in zip(names, wrapper_weights(layer), strict=True)
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
    """`checks.first_bad`, testing the tensor where it is first."""
    t = tf.convert_to_tensor(value)
    if not t.dtype.is_floating or bool(tf.reduce_all(tf.math.is_finite(t))):
        return None
    return checks.first_bad(np.asarray(t))


def _raise_if_non_finite(layer: str, weight: str, value, what: str) -> None:
    bad = _first_bad(value)
    if bad is not None:
        checks.raise_if_non_finite(layer, weight, value, what, bad=bad)


def check_finite(model) -> None:
    """Raises if a weight or a codebook scale of `model` is NaN or inf, or a
    codebook scale is zero or negative (`core.checks.check_finite`).

    `strip_quantization`, `summary` and the TFLite export call it, so a model
    whose training diverged is refused instead of being written with channels
    silently turned into one codebook value.

    Args:
        model: Any tf_keras model (QAT or plain).

    Raises:
        ValueError: Naming the layer, the weight and the first bad entry.
    """
    items = (
        checks.CodebookWeightValues(
            item.layer,
            item.weight,
            item.latent,
            item.quantizer.scale,
            lambda item=item: item.quantizer.quantized_scale(item.latent, item.qvars),
        )
        for item in codebook_items(model)
    )
    weights = ((layer.name, weight_key(w), w) for layer in model.layers for w in layer.weights)
    checks.check_finite(items, weights, non_finite=_raise_if_non_finite)


def warn_frozen_layers(model, qat) -> None:
    """One `QuantizationWarning` per layer of `model` set to `trainable=False`,
    saying what of it trains in `qat`, its quantized model (TF-MOT trains the
    weights it quantizes all the same)."""
    trainable = {id(compat.storage_variable(v)) for v in qat.trainable_weights}
    quantized = {}
    for item in codebook_items(qat) + int8_items(qat):
        trains = id(compat.storage_variable(item.latent)) in trainable
        quantized.setdefault(item.layer, ([], []))[0 if trains else 1].append(item.weight)
    for layer in model.layers:
        if layer.trainable or not layer.weights:
            continue
        training, frozen = quantized.get(layer.name, ([], []))
        if training:
            what = (
                f"its quantized weights ({', '.join(training)}) train all the same (TF-MOT "
                "trains every weight it quantizes), its other weights stay frozen"
            )
        elif frozen:
            what = f"its quantized weights ({', '.join(frozen)}) and its other weights stay frozen"
        else:
            what = "its weights stay frozen"
        warnings.warn(
            f"Layer {layer.name!r} is set to trainable=False: {what}. Set `trainable = True` "
            "on it before `quantize_model` to fine-tune all of it.",
            QuantizationWarning,
            stacklevel=4,  # the line that called td.quantize_model (through api.py)
        )


def warn_partial_codebooks(model, qat) -> None:
    """One `QuantizationWarning` per `scale=None` weight of `qat` that starts on
    only some codebook values, in a layer of `model` (the float model it was
    made from) whose output no BatchNormalization normalizes. A
    `DiscreteMultiplier` carries its own codebook, chosen with its layer: it
    is left out."""
    skip = rescale.normalized_layers(model) | {
        layer.name for layer in qat.layers if isinstance(layer, DiscreteMultiplier)
    }
    for item in codebook_items(qat):
        q = item.quantizer
        if q.scale is not None or item.layer in skip:
            continue
        latent = item.latent.numpy().reshape(-1)
        counts = np.zeros(q.codebook.size, np.int64)
        for start in range(0, latent.size, _CHUNK):  # a large layer is not copied whole
            counts += np.bincount(
                q.codebook.index_numpy(latent[start : start + _CHUNK]), minlength=q.codebook.size
            )
        used = int(np.count_nonzero(counts))
        if used >= q.codebook.size:
            continue
        warnings.warn(
            f"Layer {item.layer!r}, weight {item.weight!r}: with scale=None its weights "
            f"(mean |w| {np.mean(np.abs(latent)):.3g}) project to only {used} of the "
            f"{q.codebook.size} codebook values {text.format_values(q.codebook.values)}, and no "
            'BatchNormalization follows the layer to rescale them. Use scale="mean_abs" (or '
            f'"learned") for it, e.g. {{{item.layer!r}: td.CodebookQuantizer(values, '
            "scale='mean_abs')}, or a codebook on the scale of the weights.",
            QuantizationWarning,
            stacklevel=4,  # the line that called td.quantize_model (through api.py)
        )
