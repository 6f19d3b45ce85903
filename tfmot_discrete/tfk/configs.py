"""`DiscreteQuantizeConfig`: which weights of a layer go to which codebook.

A weight is named by an attribute path on the layer, read and written on the
object whose `call` reads it (TF-MOT's own RNN config does the same for the
cells of recurrent layers): `"kernel"`, `"cell.recurrent_kernel"`,
`"forward_layer.cell.kernel"`, `"query.kernel"`. Each segment but the last is
an attribute of the object, else a sub-layer of that name.
"""

from __future__ import annotations

import re

import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import specs as core_specs
from tfmot_discrete.core.specs import WeightSpec
from tfmot_discrete.tfk import compat, int8, sublayers
from tfmot_discrete.tfk import quantizers as quantizers_mod
from tfmot_discrete.tfk._keras import keras, register

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig
_L = keras.layers

#: tf_keras layer class -> {weight attribute: output-channel axes of that
#: weight}: the plain layers of the shared table (`core.specs.LAYER_WEIGHTS`).
LAYER_WEIGHTS = {getattr(_L, name): w for name, w in core_specs.LAYER_WEIGHTS.items()}

# Recurrent layers whose cell holds `kernel` and `recurrent_kernel`.
RECURRENT_LAYERS = {
    getattr(_L, name): None if cell is None else getattr(_L, cell)
    for name, cell in core_specs.RECURRENT_CELLS.items()
}

#: Classes `weight_specs` knows, for messages.
SUPPORTED = core_specs.SUPPORTED


def weight_specs(layer, layers=None, plain=None) -> list[WeightSpec] | None:
    """The weights of `layer` that go on a codebook, or None for a layer we
    do not know (`core.specs.weight_specs` on tf_keras's classes).

    Subclasses of a known layer class are not matched (their `call` may read
    weights differently): give them a `DiscreteQuantizeConfig` explicitly. A
    user's own tf_keras layer (a direct `Layer` subclass) gets the weights of
    the standard sub-layers it holds (`sublayers.nested_specs`).

    Args:
        layer: A layer.
        layers: The `layers` namespace whose classes are matched. Defaults to
            tf_keras's.
        plain: `{class or class name: {weight: axes}}` of the layers holding
            their own weights. Defaults to `LAYER_WEIGHTS`.
    """
    layers = _L if layers is None else layers
    if plain is not None:
        plain = {getattr(k, "__name__", k): v for k, v in plain.items()}
    cls = type(layer)
    if layers is _L and cls is not getattr(layers, cls.__name__, None):
        if sublayers.is_custom_layer(layer):  # a user's layer of sub-layers
            return sublayers.nested_specs(layer, lambda sub: weight_specs(sub, layers, plain))
    return core_specs.weight_specs(layer, layers, plain)


def quantizable_weights(layer) -> dict | None:
    """`{weight name: channel axes}` for a layer we know, else None."""
    specs = weight_specs(layer)
    return None if specs is None else {s.name: list(s.axes) for s in specs}


def weight_count(layer, specs=None) -> int:
    """How many weights of `layer` go on a codebook: those of `specs`, by
    default `weight_specs(layer)`."""
    return core_specs.weight_count(layer, weight_specs(layer) if specs is None else specs)


def resolve(layer, path: str):
    """`(owner, attribute)` of the weight at `path` (`core.specs.resolve`),
    building a restored MultiHeadAttention's projections on the way.

    Raises:
        ValueError: When a segment of `path` names nothing.
    """
    return core_specs.resolve(layer, path, prepare=_prepare)


def _prepare(obj) -> None:
    if isinstance(obj, keras.layers.MultiHeadAttention):
        _build_projections(obj)


def _build_projections(mha) -> None:
    """Builds the projections of a MultiHeadAttention restored from its config.

    `MultiHeadAttention.from_config` makes its `EinsumDense` projections but
    builds them only at the first call, while a wrapper reads their kernels
    when it is built; their input shapes are the ones the layer stored.
    """
    for projection, shape in compat.attention_projections(mha) or ():
        if not projection.built:
            projection.build(shape)


def weight_name(layer, path: str) -> str:
    """The name of the weight at `path` in reports and mapping keys.

    The name of the table (`weight_specs`) for a known layer, else the path
    with `/` between segments.

    Example:

    >>> weight_name(keras.layers.LSTM(2), "cell.recurrent_kernel")
    'recurrent_kernel'
    """
    for spec in weight_specs(layer) or ():
        if spec.path == path:
            return spec.name
    return path.replace(".", "/")


@register(package="tfmot_discrete")
class DiscreteQuantizeConfig(_QuantizeConfig):
    """Quantizes named weights of a layer to codebooks; activations stay float.

    Args:
        weight_quantizers: `{attribute path: CodebookQuantizer}`, e.g.
            `{"kernel": td.binary()}`, or for weights held by a cell or a
            sub-layer `{"cell.kernel": q, "cell.recurrent_kernel": q}`,
            `{"query.kernel": q}`. Each segment but the last is an attribute
            (or the name of a sub-layer) of the object before it. The weight
            is read with `getattr` and the quantized tensor written back with
            `setattr` on its owner before the layer's `call`, so it must be
            what that owner's `call` reads.
        activation_quantizer: Optional TF-MOT quantizer for the layer's
            output (used for simulated 8-bit activations). Defaults to `None`.

    Example:

    >>> cfg = DiscreteQuantizeConfig({"cell.kernel": quantizers_mod.binary()})
    >>> DiscreteQuantizeConfig.from_config(cfg.get_config()) == cfg
    True
    """

    def __init__(self, weight_quantizers=None, activation_quantizer=None):
        weight_quantizers = dict(weight_quantizers or {})
        for attr, q in list(weight_quantizers.items()):
            if not isinstance(attr, str) or not re.fullmatch(r"\w+(\.\w+)*", attr):
                raise ValueError(
                    "`weight_quantizers` keys must be weight attribute paths (str), such as "
                    "'kernel' or 'cell.recurrent_kernel'. "
                    f"Received: weight_quantizers={weight_quantizers!r}"
                )
            if isinstance(q, dict):
                q = keras.saving.deserialize_keras_object(q)
            if not isinstance(q, tfmot.quantization.keras.quantizers.Quantizer):
                q = quantizers_mod.get(q)
            weight_quantizers[attr] = q
        if isinstance(activation_quantizer, dict):
            activation_quantizer = keras.saving.deserialize_keras_object(activation_quantizer)
        self.weight_quantizers = weight_quantizers
        self.activation_quantizer = activation_quantizer

    def weight_names(self, layer) -> list[str]:
        """The name of each quantized weight, in `get_weights_and_quantizers` order."""
        return [weight_name(layer, path) for path in self.weight_quantizers]

    def get_weights_and_quantizers(self, layer):
        sublayers.build_sublayers(layer)  # a custom layer rebuilt from its config
        out = []
        for path, q in self.weight_quantizers.items():
            owner, attr = resolve(layer, path)
            weight = getattr(owner, attr)
            if isinstance(q, quantizers_mod.CodebookQuantizer):
                quantizers_mod.clip_to_codebook(weight, q)
            out.append((weight, q))
        return out

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self.weight_quantizers):
            raise ValueError(
                f"Expected {len(self.weight_quantizers)} quantized weights for layer "
                f"{layer.name!r}, got {len(quantize_weights)}."
            )
        for path, w in zip(self.weight_quantizers, quantize_weights, strict=True):
            owner, attr = resolve(layer, path)
            setattr(owner, attr, w)

    def restore_weights(self, layer, latent_weights) -> None:
        """Puts the latent variables back where `set_quantize_weights` wrote
        tensors, without Keras' attribute tracking (the layer's weight lists
        stay as they are)."""
        for path, w in zip(self.weight_quantizers, latent_weights, strict=True):
            owner, attr = resolve(layer, path)
            compat.rebind_attribute(owner, attr, w)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.activation_quantizer] if self.activation_quantizer is not None else []

    def get_config(self):
        return {
            "weight_quantizers": {
                a: keras.saving.serialize_keras_object(q) for a, q in self.weight_quantizers.items()
            },
            "activation_quantizer": (
                keras.saving.serialize_keras_object(self.activation_quantizer)
                if self.activation_quantizer is not None
                else None
            ),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return (
            isinstance(other, DiscreteQuantizeConfig)
            and self.weight_quantizers == other.weight_quantizers
            and self.activation_quantizer == other.activation_quantizer
        )


def _weight_quantizer(spec: WeightSpec, quantizer):
    if isinstance(quantizer, str) and quantizer == int8.INT8:
        return int8.quantizer_for(list(spec.axes))
    return quantizer.with_channel_axes(list(spec.axes))


def config_for_layer(layer, quantizer, activation_quantizer=None):
    """The `DiscreteQuantizeConfig` for a known layer type, or None.

    `quantizer` is a `CodebookQuantizer`, or `"int8"` for TF-MOT's 8-bit
    weight fake quantization (`int8.Int8WeightQuantizer`), for every weight
    of the layer; or a dict `{weight name: quantizer | "int8" | None}` (a
    weight it leaves out or maps to None stays float). None too when no
    weight is left to quantize.
    """
    specs = weight_specs(layer)
    if specs is None:
        return None
    per_weight = {}
    for spec in specs:
        q = quantizer.get(spec.name) if isinstance(quantizer, dict) else quantizer
        if q is not None:
            per_weight[spec.path] = _weight_quantizer(spec, q)
    if not per_weight:
        return None
    return DiscreteQuantizeConfig(per_weight, activation_quantizer=activation_quantizer)
