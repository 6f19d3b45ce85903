"""Which layers `quantize_model` annotates, with which config, and which
kernel-like weights stay float (and why).

A kernel-like weight is a trainable weight of rank 2 or more that is not a
bias (kernels, recurrent kernels, embeddings, attention projections). Biases, normalization
parameters and other vectors stay float by design and are not reported.
"""

from __future__ import annotations

import dataclasses

import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import rules, specs
from tfmot_discrete.core.rules import (
    MAPPED_TO_NONE,
    UNNAMED,
    UNSUPPORTED,
    FloatWeights,
)
from tfmot_discrete.core.rules import (
    report as report,
)
from tfmot_discrete.tfk import compat, configs, sublayers
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.layers import DiscreteMultiplier
from tfmot_discrete.tfk.quantizers import weight_key

_qk = tfmot.quantization.keras

#: Layers whose weights stay float by design: no notice, no error.
FLOAT_LAYERS = tuple(getattr(keras.layers, name) for name in specs.FLOAT_LAYERS)


@dataclasses.dataclass
class Plan:
    """`configs`: `{layer name: QuantizeConfig}` of the layers to annotate;
    `float_weights`: the kernel-like weights that stay float."""

    configs: dict
    float_weights: list


def is_kernel_like(variable) -> bool:
    """A trainable weight of rank 2 or more that is not a bias (a GRU's bias
    and attention's projection biases have rank 2)."""
    return (
        bool(getattr(variable, "trainable", False))
        and (variable.shape.rank or 0) >= 2
        and not weight_key(variable).endswith("bias")
    )


def _spec_names(layer) -> dict[int, str]:
    """`{id(variable): weight name}` of the weights `configs.weight_specs` names."""
    names = {}
    for spec in configs.weight_specs(layer) or ():
        try:
            owner, attr = configs.resolve(layer, spec.path)
        except ValueError:
            continue
        names[id(getattr(owner, attr))] = spec.name
    return names


def _kernel_names(layer, exclude_ids=()) -> list[str]:
    """Names of `layer`'s kernel-like variables, those in `exclude_ids` left out."""
    names = _spec_names(layer)
    return [
        names.get(id(w)) or sublayers.variable_name(layer, w)
        for w in layer.weights
        if is_kernel_like(w) and id(w) not in exclude_ids
    ]


def _quantized_ids(layer, config) -> set[int] | None:
    """Ids of the variables `config` quantizes on `layer` (None: not known)."""
    if not isinstance(config, configs.DiscreteQuantizeConfig):
        return None
    out = set()
    for path in config.weight_quantizers:
        owner, attr = configs.resolve(layer, path)
        out.add(id(getattr(owner, attr)))
    return out


def check_mapping_keys(layers, spec, weight_specs=configs.weight_specs) -> None:
    """`core.rules.check_mapping_keys`, by default with tf_keras's weight specs."""
    rules.check_mapping_keys(layers, spec, weight_specs)


def plan(layers, spec) -> Plan:
    """The config of each layer to annotate, and the weights left float.

    Args:
        layers: The model's layers (a model used as a layer is flattened
            before).
        spec: The `scheme.QuantizerRules` of the quantizer argument.

    Raises:
        ValueError: For a mapping key that names no layer, or a layer the
            mapping names whose weights we cannot reach.
    """
    explicit = spec.from_mapping
    check_mapping_keys(layers, spec)
    out = Plan({}, [])

    def left_float(layer, names, reason):
        if names:
            out.float_weights.append(
                FloatWeights(layer.name, type(layer).__name__, tuple(names), reason)
            )

    for layer in layers:
        if isinstance(layer, (keras.layers.InputLayer, *FLOAT_LAYERS)):
            continue
        found, value = spec.lookup(layer.name)
        if isinstance(value, _qk.QuantizeConfig):
            out.configs[layer.name] = value
            quantized = _quantized_ids(layer, value)
            if quantized is not None:
                left_float(layer, _kernel_names(layer, quantized), MAPPED_TO_NONE)
            continue
        if isinstance(layer, DiscreteMultiplier):
            if explicit and found and value is not None and value != layer.quantizer:
                raise ValueError(
                    f"Layer {layer.name!r} is a DiscreteMultiplier: it carries its own "
                    f"codebook ({layer.quantizer!r}); set it there instead of in the mapping."
                )
            continue
        specs = configs.weight_specs(layer)
        if specs is None:
            kernels = tuple(_kernel_names(layer))
            if explicit and found and value is not None and kernels:
                what = FloatWeights(layer.name, type(layer).__name__, kernels, UNSUPPORTED)
                raise ValueError(
                    f"The quantizer mapping names a layer it cannot reach. {what.message()}"
                )
            left_float(layer, _kernel_names(layer), UNSUPPORTED)
            continue
        if sublayers.is_custom_layer(layer):
            sublayers.check_registered(layer)
        chosen = spec.lookup_weights(layer.name, [s.name for s in specs])
        for name, v in chosen.items():
            if isinstance(v, _qk.QuantizeConfig):
                raise ValueError(
                    f"A QuantizeConfig applies to a whole layer: map {layer.name!r} itself to it, "
                    f"not its weight {name!r}. Received: a mapping key naming "
                    f"'{layer.name}/{name}' with {v!r}"
                )
        cfg = configs.config_for_layer(layer, chosen)
        quantized = set() if cfg is None else _quantized_ids(layer, cfg)
        if cfg is not None:
            out.configs[layer.name] = cfg
        rest = _kernel_names(layer, quantized)
        named = {s.name for s in specs}  # a user's layer's own kernels are not
        left_float(layer, [n for n in rest if n in chosen], MAPPED_TO_NONE)
        left_float(layer, [n for n in rest if n not in chosen and n in named], UNNAMED)
        left_float(layer, [n for n in rest if n not in named], UNSUPPORTED)
    return out


def float_weights_of(model) -> list[tuple[str, str, object]]:
    """`(layer, weight, variable)` of each kernel-like weight of a (QAT)
    model that is not quantized, layer by layer."""
    out = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, DiscreteMultiplier, *FLOAT_LAYERS)):
            continue
        if isinstance(layer, _qk.QuantizeWrapper):
            inner = layer.layer
            if isinstance(inner, FLOAT_LAYERS):
                continue
            quantized = {id(w) for w, _, _ in compat.weight_vars(layer)}
            variables = [w for w in inner.weights if id(w) not in quantized]
        else:
            inner, variables = layer, list(layer.weights)
        names = _spec_names(inner)
        out += [
            (inner.name, names.get(id(w)) or sublayers.variable_name(inner, w), w)
            for w in variables
            if is_kernel_like(w)
        ]
    return out
