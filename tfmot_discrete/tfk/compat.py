"""The one module of this package that reaches into private APIs of TensorFlow,
TF-MOT and Keras.

Each function reaches one private name and says why no public way exists. The
versions are pinned (`pyproject.toml`): an upgrade that moves one of these
names touches this file only.
"""

from __future__ import annotations

import tensorflow as tf

# Private module: TensorFlow's only way to ask whether a graph is compiled by XLA.
from tensorflow.python.ops import control_flow_util

# Private module: TF-MOT exports no public name for the input `QuantizeLayer`,
# which `quantize_apply` inserts and `strip_quantization` must recognize and drop.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer,
)

__all__ = [
    "QuantizeLayer",
    "attention_projections",
    "build_input_shape",
    "rebind_attribute",
    "in_xla_context",
    "is_autocast",
    "is_graph_network",
    "model_nodes",
    "set_constraint",
    "storage_variable",
    "trainable_weights_list",
    "validate_target_and_loss",
    "weight_vars",
]


def weight_vars(wrapper) -> list:
    """`(weight, quantizer, quantizer variables)` of each weight a TF-MOT
    `QuantizeWrapperV2` quantizes, in its order.

    Reaches TF-MOT's `QuantizeWrapper._weight_vars`: the wrapper has no public
    accessor for the quantizers it applies to its weights.
    """
    return list(getattr(wrapper, "_weight_vars", []))


def is_graph_network(model) -> bool:
    """True for a Functional (graph) model, subclasses of `Functional` included.

    Reaches tf_keras' `Model._is_graph_network`: a model built from inputs and
    outputs may still be a subclass of `keras.Model`, and no public property
    tells the two apart.
    """
    return bool(getattr(model, "_is_graph_network", False))


def model_nodes(model) -> set[int]:
    """Ids of the nodes of `model`'s own graph (a layer's `inbound_nodes` also
    hold the nodes of every other model built on it).

    Reaches tf_keras' `Functional._nodes_by_depth`: the public `model.layers`
    does not say which nodes belong to which model.
    """
    nodes = getattr(model, "_nodes_by_depth", None) or {}
    return {id(n) for depth in nodes.values() for n in depth}


def trainable_weights_list(layer) -> list:
    """The list a tf_keras layer keeps its own trainable variables in, to edit in place.

    Reaches tf_keras' `Layer._trainable_weights`: the public `trainable_weights`
    is a fresh copy, and no public method removes a variable from a layer.
    """
    return layer._trainable_weights  # noqa: SLF001


def set_constraint(var, fn) -> None:
    """Attaches `fn` as the constraint the optimizer applies after each update
    of `var` (each replica's variable for a distributed one).

    Reaches `tf.Variable._constraint` and a distributed variable's `_values`:
    a constraint can only be passed when a variable is created, and TF-MOT
    creates the latent weights before the quantizer sees them.
    """
    values = getattr(var, "_values", None)
    for v in values if values else [var]:
        v._constraint = fn  # noqa: SLF001


def storage_variable(x):
    """The variable a mixed-precision `AutoCastVariable` wraps, or `x` itself.

    Reaches tf_keras' `AutoCastVariable._variable`: reading an autocast
    variable casts it to the compute dtype, and no public name gives the
    variable in its storage dtype.
    """
    return getattr(x, "_variable", x)


def is_autocast(x) -> bool:
    """True for a mixed-precision `AutoCastVariable` (see `storage_variable`)."""
    return hasattr(x, "_variable")


def validate_target_and_loss(model, y, loss) -> None:
    """Raises tf_keras' own error when a training step has no target or no loss.

    Reaches tf_keras' `Model._validate_target_and_loss`: a custom `train_step`
    that wants `fit`'s message for a model compiled without a loss has no
    public check to call.
    """
    model._validate_target_and_loss(y, loss)  # noqa: SLF001


def in_xla_context(graph) -> bool:
    """True when `graph` (or a graph it is nested in) is compiled by XLA.

    Reaches `tensorflow.python.ops.control_flow_util`: TensorFlow has no public
    way to ask whether the code being traced runs under `jit_compile`.
    """
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def attention_projections(mha) -> list | None:
    """`(projection, input shape)` of a MultiHeadAttention's query, key, value
    and output `EinsumDense` layers; None until the layer knows its input
    shapes.

    Reaches tf_keras' `MultiHeadAttention._query_dense` and its siblings, the
    stored `_query_shape`/`_key_shape`/`_value_shape`, `_num_heads`,
    `_value_dim` and `_built_from_signature`: `from_config` creates the
    projections but builds them only at the first call, and no public name
    gives them or the shapes they were built for.
    """
    if not mha._built_from_signature:  # noqa: SLF001
        return None
    query = tf.TensorShape(mha._query_shape)  # noqa: SLF001
    heads = query[:-1].concatenate([mha._num_heads, mha._value_dim])  # noqa: SLF001
    return [
        (mha._query_dense, query),  # noqa: SLF001
        (mha._key_dense, mha._key_shape),  # noqa: SLF001
        (mha._value_dense, mha._value_shape),  # noqa: SLF001
        (mha._output_dense, heads),  # noqa: SLF001
    ]


def rebind_attribute(obj, name: str, value) -> None:
    """Sets `obj.<name> = value` without tf_keras' attribute tracking.

    `Layer.__setattr__` tracks a variable assigned to a layer again (appending
    it to the layer's weight lists, which reorders them and changes what
    `.keras` files store); putting a latent variable back where a quantized
    tensor was written only needs the name rebound.
    """
    object.__setattr__(obj, name, value)


def build_input_shape(layer):
    """The input shape `layer.build` was called with, or None.

    Reaches tf_keras' `Layer._build_input_shape`: a custom layer rebuilt from
    its config is built without being called, and no public name gives the
    shape its sub-layers must be built for.
    """
    return getattr(layer, "_build_input_shape", None)
