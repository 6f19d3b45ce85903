"""A Keras 3 model's layer tree: finding the layers to quantize wherever they
sit, and putting a wrapper where the parent holds a layer.

Keras's own `Model.quantize` reaches layers by walking `_flatten_layers()`;
this module walks the same tree (each layer's tracked sub-layers), stopping at
the layers `QuantizeWrapper` can wrap. A layer is held by its parent in an
attribute (`self.d1 = Dense(...)`), in a list or dict attribute
(`self.blocks = [...]`), and, when the parent is a Functional model (a
KerasHub backbone), in the graph's nodes too: `replace` puts the wrapper in
every one of those places, so that the parent's `call` runs the wrapper.
"""

from __future__ import annotations

import dataclasses

from tfmot_discrete.keras3 import _k3
from tfmot_discrete.keras3._k3 import keras


@dataclasses.dataclass
class Place:
    """A layer of the tree and the layer holding it.

    Attributes:
        parent: The layer (or model) whose `call` calls `layer`.
        layer: The layer.
        path: Its attribute path from the model (`"block/d1"`,
            `"encoder/layers/0"`), unique in the model.
    """

    parent: object
    layer: object
    path: str


def _attribute_names(parent, layer) -> list[str]:
    """The names under which `parent` holds `layer` (`"d1"`, `"blocks/0"`)."""
    out = []
    for name, value in _attributes(parent):
        if value is layer:
            out.append(name)
        elif isinstance(value, list | tuple):
            out += [f"{name}/{i}" for i, v in enumerate(value) if v is layer]
        elif isinstance(value, dict):
            out += [f"{name}/{k}" for k, v in value.items() if v is layer]
    return [n for n in out if not n.startswith("_")]


def _attributes(parent) -> list[tuple[str, object]]:
    """`parent`'s attributes: its `__dict__`, and on PyTorch its sub-modules
    (which `torch.nn.Module` keeps apart, in `_modules`)."""
    return list(vars(parent).items()) + list(_k3.torch_modules(parent).items())


def sublayers(layer) -> list:
    """The layers `layer` tracks (its direct children in the tree)."""
    return list(_k3.tracked_layers(layer))


def walk(model, stop, prefix="") -> list[Place]:
    """Every layer below `model`, depth first in tracking order, not below a
    layer for which `stop(layer)` is true (such a layer is listed, its
    sub-layers are not). A layer held twice is listed once. Paths start with
    `prefix`; a layer is named by the public attribute holding it, else by
    its name."""
    out, seen = [], set()

    def visit(parent, prefix):
        for child in sublayers(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            names = _attribute_names(parent, child)
            name = names[0] if names else child.name
            path = f"{prefix}{name}"
            out.append(Place(parent, child, path))
            if not stop(child):
                visit(child, path + "/")

    visit(model, prefix)
    return out


def replace(parent, old, new) -> None:
    """Puts `new` wherever `parent` holds `old`: its tracked layers, its
    attributes (lists and dicts of layers included), and for a Functional
    `parent` its graph nodes and operations.

    Raises:
        ValueError: When `parent` does not hold `old`.
    """
    found = _k3.replace_tracked_layer(parent, old, new)
    modules = _k3.torch_modules(parent)
    for name, value in _attributes(parent):
        if name == "_layers":
            continue
        if value is old and modules.get(name) is old:
            modules[name] = new
            found = True
        elif value is old:
            object.__setattr__(parent, name, new)
            found = True
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if v is old:
                    # (Keras's TrackedList tracks appends, not item assignment;
                    # TensorFlow's list wrapper keeps its items apart from `list`'s.)
                    value[i] = new
                    found = True
        elif isinstance(value, dict):
            for k, v in list(value.items()):
                if v is old:
                    dict.__setitem__(value, k, new)
                    found = True
    if isinstance(parent, keras.Model) and _k3.is_functional(parent):
        found = _k3.replace_graph_operation(parent, old, new) or found
    if not found:
        raise ValueError(
            f"Layer {parent.name!r} does not hold layer {old.name!r}; cannot put "
            f"{new.name!r} in its place."
        )
