"""The tf_keras path's steps of a per-layer scan (`td.sensitivity`, `td.plan`)
through TF-MOT.

A unit is one of the model's own layers (a nested model is flattened
first), since TF-MOT's `quantize_apply` rebuilds the model layer by layer.
`tools.sensitivity.path_of` picks this module or its Keras 3 twin.
"""

from __future__ import annotations

import re

from tfmot_discrete.core import specs
from tfmot_discrete.tfk import configs, nested, quantize
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.configs import resolve, weight_specs
from tfmot_discrete.tfk.quantize import quantize_model, strip_quantization

__all__ = ["quantize_model", "resolve", "strip_quantization", "weight_specs"]

KERAS3 = False
SUPPORTED = tuple(configs.LAYER_WEIGHTS)  # what `quantize_model` quantizes
loss = keras.losses.get


def check(model) -> None:
    """Raises unless `model` is a tf_keras model the TF-MOT path quantizes
    (not a subclassed one)."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a tf_keras model or a Keras 3 model. Received: model of type "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    quantize.check_model(model)


def units(model) -> list[specs.ScanUnit]:
    """The model's built layers `quantize_model` can quantize, by name (a
    nested model is flattened by `prepare` first)."""
    return [
        specs.ScanUnit(re.escape(layer.name), layer.name, layer)
        for layer in model.layers
        if configs.quantizable_weights(layer) is not None and layer.weights
    ]


def others(model) -> list:
    """The model's other layers (inputs left out)."""
    quantizable = {id(u.layer) for u in units(model)}
    return [
        layer
        for layer in model.layers
        if id(layer) not in quantizable and type(layer).__name__ != "InputLayer"
    ]


def copy(model):
    """A copy with new layers and the same weights."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def prepare(model):
    """The model to scan: nested models flattened, so that a backbone's
    layers count one by one."""
    return nested.flatten(model, scope=quantize.quantize_scope)
