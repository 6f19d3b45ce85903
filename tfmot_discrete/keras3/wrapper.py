"""`QuantizeWrapper`: a Keras 3 layer computing with its inner layer's weights
projected to a codebook (or rounded to 8 bits)."""

from __future__ import annotations

import inspect

from tfmot_discrete import configs, int8
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.keras3._k3 import keras, register
from tfmot_discrete.quantizers import CodebookQuantizer

_L = keras.layers


def _keras3_names(tf_keras_class, weights: dict) -> dict:
    """A tf_keras layer's `{weight: axes}` under the Keras 3 weight names
    (Keras 3 calls DepthwiseConv's weight `kernel`)."""
    if tf_keras_class.__name__.startswith("DepthwiseConv"):
        return {"kernel": weights["depthwise_kernel"]}
    return dict(weights)


#: Keras 3 layer class -> {weight name: output-channel axes of that weight}:
#: the plain layers of `tfmot_discrete.configs.LAYER_WEIGHTS`, by class name,
#: and DepthwiseConv1D, which only Keras 3 has among them.
LAYER_WEIGHTS = {
    getattr(_L, cls.__name__): _keras3_names(cls, weights)
    for cls, weights in configs.LAYER_WEIGHTS.items()
}
LAYER_WEIGHTS[_L.DepthwiseConv1D] = {"kernel": [-2, -1]}


def quantizable_weights(layer) -> dict | None:
    """`{weight name: channel axes}` for a Keras 3 layer class we know, else None
    (subclasses are not matched: their `call` may read weights differently)."""
    return LAYER_WEIGHTS.get(type(layer))


def _quantizer_config(quantizer):
    return quantizer if isinstance(quantizer, str) else quantizer.get_config()


def _quantizer_from(value):
    if isinstance(value, str) and value == int8.INT8:
        return value
    if isinstance(value, CodebookQuantizer):
        return value
    return CodebookQuantizer.from_config(value)


def per_weight_quantizer(quantizer, axes):
    """The quantizer of one weight: the codebook one with the weight's channel
    axes, or 8-bit per channel when the last axis is a channel axis."""
    if isinstance(quantizer, str):
        return int8.quantizer_for(axes)
    return quantizer.with_channel_axes(axes)


@register(package="tfmot_discrete")
class QuantizeWrapper(keras.layers.Layer):
    """Runs `layer` with its kernel-like weights quantized on every call.

    The inner layer keeps its float latent weights; before its `call` the
    wrapper puts the quantized tensors where `call` reads them (the attribute
    holding each variable) and puts the variables back after. Gradients reach
    the latent weights through the quantizer's straight-through estimator.

    Args:
        layer: A built or unbuilt Keras 3 layer of a class in `LAYER_WEIGHTS`.
        quantizer: A `CodebookQuantizer`, or `"int8"` for 8-bit weights
            (symmetric, narrow range, per output channel).
        **kwargs: Base layer arguments. The name defaults to
            `"quant_" + layer.name`.
    """

    def __init__(self, layer, quantizer, **kwargs):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        weights = quantizable_weights(layer)
        if weights is None:
            raise ValueError(
                f"QuantizeWrapper cannot quantize layer {layer.name!r} of class "
                f"{type(layer).__name__}; supported: "
                f"{sorted(c.__name__ for c in LAYER_WEIGHTS)}. Received: layer={layer!r}"
            )
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(**kwargs)
        self.layer = layer
        self.quantizer = _quantizer_from(quantizer)
        self._weight_axes = weights
        self._states = []
        self._takes_training = "training" in inspect.signature(layer.call).parameters
        self.seed_generator = keras.random.SeedGenerator(0)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        by_name = {v.name.split("/")[-1]: v for v in self.layer.weights}
        self._states = []
        for name, axes in self._weight_axes.items():
            var = by_name[name]
            attr = next(k for k, v in vars(self.layer).items() if v is var)
            state = k3q.make_state(self, var, per_weight_quantizer(self.quantizer, axes))
            self._states.append((attr, var, state))
        self.built = True

    @property
    def states(self) -> list[tuple[object, k3q.WeightState]]:
        """`(latent variable, WeightState)` of each quantized weight."""
        return [(var, state) for _, var, state in self._states]

    def call(self, inputs, training=None):
        training = bool(training)
        swapped = [
            (attr, k3q.quantize(state, var.value, training, self.seed_generator))
            for attr, var, state in self._states
        ]
        for attr, tensor in swapped:
            object.__setattr__(self.layer, attr, tensor)
        try:
            if self._takes_training:
                return self.layer.call(inputs, training=training)
            return self.layer.call(inputs)
        finally:
            for attr, var, _ in self._states:
                object.__setattr__(self.layer, attr, var)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "quantizer": _quantizer_config(self.quantizer),
            }
        )
        return config
