"""The one module of `tfmot_discrete.keras3` that imports Keras 3.

Keras 3 is `import keras` (and `tf.keras` since TensorFlow 2.16); its backend
(`KERAS_BACKEND`: tensorflow, jax or torch) is chosen before it is first
imported. Every other module of this subpackage takes `keras` from here and
computes with `keras.ops`, so that it runs on every backend.
"""

from __future__ import annotations

import keras

register = keras.saving.register_keras_serializable
ops = keras.ops


def backend() -> str:
    """The Keras 3 backend of this process: `"tensorflow"`, `"jax"` or `"torch"`."""
    return keras.backend.backend()


def is_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_graph_model(model) -> bool:
    """A Sequential or Functional Keras 3 model (rebuildable from its config)."""
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def is_functional(model) -> bool:
    """A model computed by a graph of layer calls (Functional, or a class
    derived from it, as KerasHub's backbones and tasks are)."""
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def tracked_layers(layer) -> list:
    """The sub-layers `layer` tracks, in order. Keras 3 keeps them in the
    private `_layers` list (what `Layer._flatten_layers` walks); there is no
    public list of a layer's direct children."""
    return list(getattr(layer, "_layers", ()))


def replace_tracked_layer(parent, old, new) -> bool:
    """Puts `new` in `old`'s place in `parent`'s tracked layers (the private
    `_layers` list: `weights`, `trainable_variables` and saving walk it; a
    public `setattr` would append `new` after a built layer's state is locked)."""
    held = getattr(parent, "_layers", None)
    if held is None:
        return False
    found = False
    for i, layer in enumerate(held):
        if layer is old:
            held[i] = new
            found = True
    return found


def replace_graph_operation(model, old, new) -> bool:
    """Puts `new` in `old`'s place in a Functional model's graph: the private
    `_operations` list (`model.layers`) and each node whose `operation` is
    `old` (`Functional.call` runs `node.operation`). Keras has no public way
    to swap a layer of a built graph in place."""
    found = False
    ops_list = model._operations  # noqa: SLF001  (see the docstring)
    for i, op in enumerate(ops_list):
        if op is old:
            ops_list[i] = new
            found = True
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001
        for node in nodes:
            if node.operation is old:
                node.operation = new
                found = True
    return found


def consumers(model) -> dict[int, list]:
    """`{id(layer): the layers taking its output}` in a Sequential or
    Functional model's graph (the private `_nodes_by_depth` of a Functional
    model: Keras 3 has no public list of a layer's consumers)."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        return {id(a): [b] for a, b in zip(layers, layers[1:])}
    out = {}
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001  (see the docstring)
        for node in nodes:
            for parent in node.parent_nodes:
                out.setdefault(id(parent.operation), []).append(node.operation)
    return out


def flatten_layers(layer) -> list:
    """Every layer below `layer` (not itself), as Keras's private
    `_flatten_layers` lists them (`Model.quantize` walks the same list)."""
    return layer._flatten_layers(include_self=False)  # noqa: SLF001  (see the docstring)


def torch_modules(layer) -> dict:
    """On PyTorch, the sub-modules `torch.nn.Module` keeps by attribute name
    (its `_modules` dict: a layer held in an attribute is there, not in the
    object's `__dict__`); elsewhere an empty dict."""
    modules = getattr(layer, "_modules", None) if backend() == "torch" else None
    return modules if isinstance(modules, dict) else {}
