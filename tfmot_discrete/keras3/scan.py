"""The Keras 3 path's steps of a per-layer scan (`td.sensitivity`, `td.plan`):
every supported layer anywhere in the layer tree is a unit, named by its
path, on any backend. `tools.sensitivity.path_of` picks this module or
`tfmot_discrete.tfk.scan`, which has the same names.
"""

from __future__ import annotations

import re

from tfmot_discrete.core import specs
from tfmot_discrete.core.specs import resolve
from tfmot_discrete.keras3 import reach, tree
from tfmot_discrete.keras3._k3 import is_graph_model, keras
from tfmot_discrete.keras3.quantize import check_model as check
from tfmot_discrete.keras3.quantize import copy_model as copy
from tfmot_discrete.keras3.quantize import quantize_model, strip_quantization
from tfmot_discrete.keras3.wrapper import LAYER_WEIGHTS, weight_specs

__all__ = ["check", "copy", "quantize_model", "resolve", "strip_quantization", "weight_specs"]

KERAS3 = True
#: The layer classes `quantize_model` quantizes.
SUPPORTED = tuple(LAYER_WEIGHTS)
loss = keras.losses.get


def _places(model) -> tuple[list, list]:
    units, others = [], []
    for place in reach.places(model, is_graph_model(model)):
        layer = place.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if weight_specs(layer) is not None and layer.weights:
            units.append(place)
        elif reach.is_leaf(layer) or not tree.sublayers(layer):
            others.append(place)
    return units, others


def units(model) -> list[specs.ScanUnit]:
    """The built layers `quantize_model` can put on a codebook, anywhere in
    the layer tree, named by their paths (`"block/d1"`)."""
    return [specs.ScanUnit(re.escape(p.path), p.path, p.layer) for p in _places(model)[0]]


def others(model) -> list:
    """The other layers at the tree's leaves (inputs left out)."""
    return [p.layer for p in _places(model)[1]]


def prepare(model):
    """The model to scan: the model itself (the tree walk reaches nested models)."""
    return model
