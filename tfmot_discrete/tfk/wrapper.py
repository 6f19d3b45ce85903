"""TF-MOT's `QuantizeWrapperV2`, putting the latent weights back after each call.

`DiscreteQuantizeConfig` writes each quantized weight as a tensor onto the
object whose `call` reads it (a layer, its RNN cell, a sub-layer). Saving a
SavedModel traces every sub-layer's `call` on its own; a cell or sub-layer
still holding a tensor from the wrapper's last trace cannot be saved ("captures
graph tensor ... from a parent function"). This wrapper writes the latent
variables back once the inner layer has run, without Keras' attribute
tracking (so the layer's weight list, and what `.keras` files store, stay as
TF-MOT leaves them).
"""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfmot_discrete.tfk import compat, configs

_qk = tfmot.quantization.keras


class QuantizeWrapper(_qk.QuantizeWrapperV2):
    """`QuantizeWrapperV2` that leaves the inner layer's latent weights in
    place after `call`, and lists its weights in one order however it is
    built (`fix_weight_order`)."""

    def build(self, input_shape):
        super().build(input_shape)
        # An inner layer built before the wrapper (one of this package's
        # classes, which Keras builds when it deserializes them) has its
        # weights listed once more, first.
        fix_weight_order(self)

    def call(self, inputs, training=None, **kwargs):
        try:
            return super().call(inputs, training=training, **kwargs)
        finally:
            config = self.quantize_config
            if isinstance(config, configs.DiscreteQuantizeConfig):
                latent = [w for w, _, _ in compat.weight_vars(self)]
                config.restore_weights(self.layer, latent)


# Keras names saved objects after the class: keep TF-MOT's, so that files load
# with or without this package's scope.
QuantizeWrapper.__name__ = QuantizeWrapper.__qualname__ = "QuantizeWrapperV2"


def adopt(model) -> None:
    """Makes every TF-MOT `QuantizeWrapperV2` of `model` this class, in place,
    puts the latent weights back that building the model replaced, and puts
    the weights in the order a fresh build gives (`fix_weight_order`: TF-MOT's
    `quantize_apply` builds each wrapper around a built layer)."""
    for layer in model.layers:
        if type(layer) is _qk.QuantizeWrapperV2:
            layer.__class__ = QuantizeWrapper
            fix_weight_order(layer)
            if isinstance(layer.quantize_config, configs.DiscreteQuantizeConfig):
                latent = [w for w, _, _ in compat.weight_vars(layer)]
                layer.quantize_config.restore_weights(layer.layer, latent)


def fix_weight_order(wrapper) -> None:
    """Puts a `QuantizeWrapperV2`'s weights in the order a fresh build gives.

    After `quantize_apply` (or the build of a wrapper whose inner layer was
    built before it), the wrapper lists the inner layer's weights once more,
    first; a wrapper rebuilt from its config (as `load_model` does) around an
    unbuilt layer does not, so saved weights would load into the wrong
    variables.
    """
    fresh = []
    for weight, _, qvars in compat.weight_vars(wrapper):
        fresh.extend(v for v in (qvars or {}).values() if v.trainable)
        fresh.append(weight)
    tw = compat.trainable_weights_list(wrapper)
    if len(tw) > len(fresh) and [id(v) for v in tw[len(tw) - len(fresh) :]] == [
        id(v) for v in fresh
    ]:
        del tw[: len(tw) - len(fresh)]
