"""`DiscreteQuantizeConfig`: which weights of a layer go to which codebook."""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfmot_discrete import int8
from tfmot_discrete import quantizers as quantizers_mod
from tfmot_discrete._keras import keras, register

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig

# Layer class -> {weight attribute: output-channel axes of that weight}.
# The axes are those a per-channel TFLite tensor keeps after conversion.
_L = keras.layers
LAYER_WEIGHTS = {
    _L.Dense: {"kernel": [-1]},
    _L.Conv1D: {"kernel": [-1]},
    _L.Conv2D: {"kernel": [-1]},
    _L.Conv3D: {"kernel": [-1]},
    _L.DepthwiseConv2D: {"depthwise_kernel": [-2, -1]},
    _L.SeparableConv1D: {"depthwise_kernel": [-2, -1], "pointwise_kernel": [-1]},
    _L.SeparableConv2D: {"depthwise_kernel": [-2, -1], "pointwise_kernel": [-1]},
    _L.Conv1DTranspose: {"kernel": [-2]},
    _L.Conv2DTranspose: {"kernel": [-2]},
    _L.Conv3DTranspose: {"kernel": [-2]},
    _L.Embedding: {"embeddings": [0]},
}


def quantizable_weights(layer) -> dict | None:
    """`{attribute: channel axes}` for a layer we know, else None.

    Subclasses of a known layer class are not matched (their `call` may read
    weights differently): give them a `DiscreteQuantizeConfig` explicitly.
    """
    return LAYER_WEIGHTS.get(type(layer))


@register(package="tfmot_discrete")
class DiscreteQuantizeConfig(_QuantizeConfig):
    """Quantizes named weights of a layer to codebooks; activations stay float.

    Args:
        weight_quantizers: `{attribute name: CodebookQuantizer}`, e.g.
            `{"kernel": td.binary()}`. The attribute is read with `getattr`
            and the quantized tensor written back with `setattr` before
            the layer's `call`, so it must be what `call` reads.
        activation_quantizer: Optional TF-MOT quantizer for the layer's
            output (used for simulated 8-bit activations). Defaults to `None`.

    Example:

    >>> cfg = DiscreteQuantizeConfig({"kernel": quantizers_mod.binary()})
    >>> DiscreteQuantizeConfig.from_config(cfg.get_config()) == cfg
    True
    """

    def __init__(self, weight_quantizers=None, activation_quantizer=None):
        weight_quantizers = dict(weight_quantizers or {})
        for attr, q in list(weight_quantizers.items()):
            if not isinstance(attr, str):
                raise ValueError(
                    "`weight_quantizers` keys must be weight attribute names (str). "
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

    def get_weights_and_quantizers(self, layer):
        out = []
        for attr, q in self.weight_quantizers.items():
            if not hasattr(layer, attr):
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) has no weight "
                    f"attribute {attr!r}; its weights are "
                    f"{[w.name for w in layer.weights]}."
                )
            out.append((getattr(layer, attr), q))
        return out

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self.weight_quantizers):
            raise ValueError(
                f"Expected {len(self.weight_quantizers)} quantized weights for layer "
                f"{layer.name!r}, got {len(quantize_weights)}."
            )
        for attr, w in zip(self.weight_quantizers, quantize_weights):
            setattr(layer, attr, w)

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


def config_for_layer(layer, quantizer, activation_quantizer=None):
    """The `DiscreteQuantizeConfig` for a known layer type, or None.

    `quantizer` is a `CodebookQuantizer`, or `"int8"` for TF-MOT's 8-bit
    weight fake quantization (`int8.Int8WeightQuantizer`).
    """
    weights = quantizable_weights(layer)
    if weights is None:
        return None
    if isinstance(quantizer, str) and quantizer == int8.INT8:
        per_weight = {attr: int8.quantizer_for(axes) for attr, axes in weights.items()}
    else:
        per_weight = {attr: quantizer.with_channel_axes(axes) for attr, axes in weights.items()}
    return DiscreteQuantizeConfig(
        per_weight,
        activation_quantizer=activation_quantizer,
    )
