"""A user's own tf_keras layer made of standard sub-layers: where its weights are.

`class Block(keras.layers.Layer)` holding `self.d1 = Dense(...)`,
`self.convs = [Conv2D(...), ...]` and calling them in its `call` computes with
the sub-layers' weights, each read by the sub-layer's own `call`. Its weights
go on a codebook the way an RNN cell's do: `DiscreteQuantizeConfig` reads and
writes each one on the sub-layer that holds it, by an attribute path
(`"d1.kernel"`, `"convs.0.kernel"`); the weight's name in mapping keys and
reports is that path with `/` (`"block/d1/kernel"`, `"block/convs/0/kernel"`).

Sub-layers are found by walking the layer's attributes: a layer, a list or
tuple of layers, recursively (a block inside a block), and the layers of a
Functional model held as an attribute (by their names). A sub-layer held any
other way (a dict) is not reached: its kernels stay float, with the usual
notice. The custom layer's own `add_weight` kernels stay float too (notice,
or an error with `strict=True`); name them in a `DiscreteQuantizeConfig`.
"""

from __future__ import annotations

import re

import tensorflow as tf

from tfmot_discrete.tfk import compat
from tfmot_discrete.tfk._keras import keras

_SEGMENT = re.compile(r"\w+")
# Attributes every tf_keras layer has (Keras' own tracking lists, which hold
# sub-layers too): not places a user's `__init__` put a sub-layer.
_BASE_ATTRIBUTES = frozenset(vars(keras.layers.Layer()))


def is_custom_layer(layer) -> bool:
    """Whether `layer`'s class derives from `keras.layers.Layer` through no
    other tf_keras layer class (a subclass of `Dense` or of `LSTM` is not:
    its `call` may read the weights its parent holds differently)."""
    if isinstance(layer, keras.Model):
        return False
    for cls in type(layer).__mro__:
        if getattr(keras.layers, cls.__name__, None) is cls:
            return cls is keras.layers.Layer
    return False


def held_layers(layer) -> list[tuple[str, object]]:
    """`(attribute path segment(s), sub-layer)` of each sub-layer `layer`
    holds directly, in attribute order, each sub-layer once.

    Example:

    >>> class Two(keras.layers.Layer):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a = keras.layers.Dense(2)
    ...         self.b = [keras.layers.Dense(2)]
    >>> [path for path, _ in held_layers(Two())]
    ['a', 'b.0']
    """
    if isinstance(layer, keras.Model) and compat.is_graph_network(layer):
        found = [(sub.name, sub) for sub in layer.layers]
    else:
        found = []
        for attr, value in vars(layer).items():
            if attr in _BASE_ATTRIBUTES or not _SEGMENT.fullmatch(attr):
                continue
            if isinstance(value, keras.layers.Layer):
                found.append((attr, value))
            elif isinstance(value, list | tuple):
                found += [
                    (f"{attr}.{i}", v)
                    for i, v in enumerate(value)
                    if isinstance(v, keras.layers.Layer)
                ]
    seen, out = set(), []
    for path, sub in found:
        if id(sub) not in seen and _SEGMENT.fullmatch(path.replace(".", "_")):
            seen.add(id(sub))
            out.append((path, sub))
    return out


def nested_specs(layer, specs_of) -> list | None:
    """The weights of `layer`'s sub-layers that go on a codebook, as
    `WeightSpec`s relative to `layer`, or None when it holds none.

    Args:
        layer: A tf_keras layer that the weight table does not know.
        specs_of: The weight table's function for one sub-layer (a
            `configs.weight_specs` on the same namespace): its `WeightSpec`s
            or None.
    """
    out = []
    for path, sub in held_layers(layer):
        if isinstance(sub, keras.layers.InputLayer):
            continue
        specs = specs_of(sub)
        if specs is None:
            specs = nested_specs(sub, specs_of)
        name = path.replace(".", "/")
        out += [s.nested(f"{name}/", f"{path}.") for s in specs or ()]
    return out or None


def _unbuilt(layer) -> bool:
    """Whether a sub-layer of `layer` (recursively) is not built yet."""
    return any(not sub.built or _unbuilt(sub) for _, sub in held_layers(layer))


def build_sublayers(layer) -> None:
    """Builds the sub-layers of a custom `layer` that is built itself.

    `Layer.build` (which `QuantizeWrapperV2` calls on a layer rebuilt from its
    config) only marks a custom layer built: its sub-layers make their weights
    at its first call. Tracing its `call` once on the input shape it was
    built with makes them (Keras creates variables outside the trace), so the
    wrapper finds the weights it quantizes. Nothing is computed.

    Raises:
        ValueError: When `layer` does not know its input shape (its `build`
            does not call `super().build(input_shape)`).
    """
    if not is_custom_layer(layer) or not layer.built or not _unbuilt(layer):
        return
    shape = compat.build_input_shape(layer)
    if shape is None:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) holds sub-layers that are not built, "
            "and it does not know its input shape to build them: call "
            "`super().build(input_shape)` at the end of its `build`."
        )
    tf.function(layer.call, autograph=False).get_concrete_function(
        _specs(shape, layer.compute_dtype)
    )


def _is_shape(shape) -> bool:
    return isinstance(shape, tf.TensorShape) or (
        isinstance(shape, list | tuple) and all(d is None or isinstance(d, int) for d in shape)
    )


def _specs(shape, dtype):
    """`tf.TensorSpec`s for a layer's input shape (one shape, or a list, tuple
    or dict of shapes)."""
    if _is_shape(shape):
        return tf.TensorSpec(tf.TensorShape(shape), dtype)
    if isinstance(shape, dict):
        return {k: _specs(v, dtype) for k, v in shape.items()}
    return tuple(_specs(s, dtype) for s in shape)  # one argument holding several tensors


def weight_owner(layer, name: str):
    """The standard sub-layer of a user's `layer` that holds the weight named
    `name` (`"d1/kernel"`, `"convs/0/kernel"`), or `layer` itself when no
    sub-layer's path leads `name`.

    Example:

    >>> class One(keras.layers.Layer):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.convs = [keras.layers.Conv1D(2, 3)]
    >>> type(weight_owner(One(), "convs/0/kernel")).__name__
    'Conv1D'
    """
    if not (is_custom_layer(layer) or isinstance(layer, keras.Model)):
        return layer
    for path, sub in held_layers(layer):
        prefix = path.replace(".", "/") + "/"
        if name.startswith(prefix):
            return weight_owner(sub, name[len(prefix) :])
    return layer


def check_registered(layer) -> None:
    """Raises unless Keras can rebuild `layer`'s class from its config.

    `quantize_apply` clones the model through `get_config`/`from_config`;
    for an unregistered class TF-MOT's own error ("Unable to clone model")
    points at `quantize_scope` instead.

    Raises:
        ValueError: Naming the layer, its class and the registration.
    """
    cls = type(layer)
    if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls:
        if layer.get_config().get("name") == layer.name:
            return
        raise ValueError(
            f"Layer {layer.name!r} ({cls.__name__}): its `get_config()` does not hold its name, "
            "so the layer rebuilt by TF-MOT's `quantize_apply` would lose it (and its "
            "weights their mapping keys). Return `{**super().get_config(), <your __init__ "
            f"arguments>}}`. Received: get_config()={layer.get_config()!r}"
        )
    raise ValueError(
        f"Layer {layer.name!r} is of your class {cls.__name__}, which Keras cannot rebuild "
        "from its config: TF-MOT's `quantize_apply` clones the model that way. Register it "
        "(`@keras.saving.register_keras_serializable(package=...)` above `class "
        f"{cls.__name__}`, with a `get_config` returning its `__init__` arguments), or "
        "quantize inside `keras.utils.custom_object_scope({'" + cls.__name__ + "': "
        f"{cls.__name__}}})`."
    )


def variable_name(layer, variable) -> str:
    """A weight's name in `layer`: the attribute path of the sub-layer of a
    user's layer that holds it, with `/` (`"dw/depthwise_kernel"`), else its
    own name (`"kernel"`), for messages about weights that stay float."""
    own = variable.name.split(":")[0].split("/")[-1]
    if is_custom_layer(layer) or isinstance(layer, keras.Model):
        for path, sub in held_layers(layer):
            if any(w is variable for w in sub.weights):
                return f"{path.replace('.', '/')}/{variable_name(sub, variable)}"
    return own
