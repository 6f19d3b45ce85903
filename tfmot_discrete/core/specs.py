"""The weight-spec table: which weights of which layer class go on a codebook,
where each is read (an attribute path) and its output-channel axes.

Keyed by class NAME, so that both paths read it: the tf_keras path matches
names in tf_keras's `layers` namespace, the Keras 3 path in Keras 3's. A
weight is named by an attribute path on the layer, read and written on the
object whose `call` reads it (TF-MOT's own RNN config does the same for the
cells of recurrent layers): `"kernel"`, `"cell.recurrent_kernel"`,
`"forward_layer.cell.kernel"`, `"query.kernel"`. Each segment but the last is
an attribute of the object, else a sub-layer of that name.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

# Layer class name -> {weight attribute: output-channel axes of that weight}
# (tf_keras's weight names; Keras 3 calls DepthwiseConv's weight `kernel`).
# The axes are those a per-channel TFLite tensor keeps after conversion.
LAYER_WEIGHTS = {
    "Dense": {"kernel": [-1]},
    "Conv1D": {"kernel": [-1]},
    "Conv2D": {"kernel": [-1]},
    "Conv3D": {"kernel": [-1]},
    "DepthwiseConv2D": {"depthwise_kernel": [-2, -1]},
    "SeparableConv1D": {"depthwise_kernel": [-2, -1], "pointwise_kernel": [-1]},
    "SeparableConv2D": {"depthwise_kernel": [-2, -1], "pointwise_kernel": [-1]},
    "Conv1DTranspose": {"kernel": [-2]},
    "Conv2DTranspose": {"kernel": [-2]},
    "Conv3DTranspose": {"kernel": [-2]},
    "Embedding": {"embeddings": [0]},
}

# Recurrent layers whose cell holds `kernel` and `recurrent_kernel` (inputs x
# gates*units, units x gates*units): one output channel per gate unit. The
# layer's name -> its cell class's name (None: the layer is its own cell).
RECURRENT_CELLS = {
    "LSTM": "LSTMCell",
    "GRU": "GRUCell",
    "SimpleRNN": "SimpleRNNCell",
    "ConvLSTM1D": None,
    "ConvLSTM2D": None,
    "ConvLSTM3D": None,
}
_RECURRENT_CELLS = RECURRENT_CELLS
_RECURRENT_WEIGHTS = ("kernel", "recurrent_kernel")
# `keras.layers.RNN(cell)` with one of these cells reads the same weights.
_STANDARD_CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell")

# MultiHeadAttention's projections: (weight name, path, channel axes). The
# query/key/value kernels are (dim, heads, head_dim); the output one is
# (heads, head_dim, dim).
_ATTENTION_WEIGHTS = (
    ("query/kernel", "query.kernel", (-2, -1)),
    ("key/kernel", "key.kernel", (-2, -1)),
    ("value/kernel", "value.kernel", (-2, -1)),
    ("attention_output/kernel", "attention_output.kernel", (-1,)),
)

#: Classes `weight_specs` knows, for messages.
SUPPORTED = sorted(
    [*LAYER_WEIGHTS, *RECURRENT_CELLS]
    + ["Bidirectional", "EinsumDense", "MultiHeadAttention", "RNN", "TimeDistributed"]
)

#: Layers whose weights stay float by design: no notice, no error.
FLOAT_LAYERS = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "PReLU",
)


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One weight of a layer that can go on a codebook.

    Attributes:
        name: Its name in mapping keys, reports and exports, unique in the
            layer (`"kernel"`, `"recurrent_kernel"`, `"query/kernel"`,
            `"forward/kernel"`).
        path: The attribute path `DiscreteQuantizeConfig` reads and writes
            (`"cell.kernel"`, `"query.kernel"`).
        axes: Output-channel axes (those a per-channel tensor keeps).
    """

    name: str
    path: str
    axes: tuple[int, ...]

    def nested(self, name_prefix: str, path_prefix: str) -> WeightSpec:
        return WeightSpec(name_prefix + self.name, path_prefix + self.path, self.axes)


@dataclasses.dataclass(frozen=True)
class ScanUnit:
    """A layer that `td.sensitivity` and `td.plan` quantize on its own (each
    path's `scan.units` lists them)."""

    key: str  # a `quantize_model` mapping key naming this layer alone
    name: str  # shown in tables: its path in the layer tree (a model's own layer: its name)
    layer: object


def _einsum_axes(equation: str) -> tuple[int, ...]:
    """Axes of an EinsumDense kernel that reach the output (its channels).

    Example:

    >>> _einsum_axes("abc,cde->abde")
    (-2, -1)
    """
    inputs, output = equation.split("->")
    kernel = inputs.split(",")[1]
    rank = len(kernel)
    return tuple(i - rank for i, c in enumerate(kernel) if c in output)


def weights_class(layer) -> type:
    """The class whose weights `layer` reads: its own, or for this package's
    subclasses that read them as their base class does (`reads_weights_as`,
    e.g. `tfk.recurrent.Int8LSTM`), that class."""
    return getattr(type(layer), "reads_weights_as", type(layer))


def weight_specs(layer, layers, plain=None) -> list[WeightSpec] | None:
    """The weights of `layer` that go on a codebook, or None for a layer we
    do not know.

    Subclasses of a known layer class are not matched (their `call` may read
    weights differently): give them a `DiscreteQuantizeConfig` explicitly.

    Args:
        layer: A layer.
        layers: The `layers` namespace whose classes are matched, by name and
            then exactly: tf_keras's on the tf_keras path, Keras 3's on the
            Keras 3 path, so that both paths read this one table.
        plain: `{class name: {weight: axes}}` of the layers holding their own
            weights. Defaults to `LAYER_WEIGHTS`.
    """
    plain = LAYER_WEIGHTS if plain is None else plain
    cls = weights_class(layer)
    name = cls.__name__
    if cls is not getattr(layers, name, None):
        return None  # not a class of this namespace (a subclass, a custom layer)
    if name in plain:
        return [WeightSpec(a, a, tuple(axes)) for a, axes in plain[name].items()]

    def inner(sub):
        return weight_specs(sub, layers, plain)

    if name in _RECURRENT_CELLS or name == "RNN":
        cell = type(layer.cell)
        if name == "RNN" and not (
            cell.__name__ in _STANDARD_CELLS and cell is getattr(layers, cell.__name__)
        ):
            return None  # stacked or custom cells: name their weights in a config
        cell_name = _RECURRENT_CELLS.get(name)
        if cell_name is not None and cell is not getattr(layers, cell_name):
            return None
        return [WeightSpec(a, f"cell.{a}", (-1,)) for a in _RECURRENT_WEIGHTS]
    if name == "EinsumDense":
        return [WeightSpec("kernel", "kernel", _einsum_axes(layer.equation))]
    if name == "MultiHeadAttention":
        return [WeightSpec(*w) for w in _ATTENTION_WEIGHTS]
    if name == "TimeDistributed":
        specs = inner(layer.layer)
        return None if specs is None else [s.nested("", "layer.") for s in specs]
    if name == "Bidirectional":
        fwd, bwd = inner(layer.forward_layer), inner(layer.backward_layer)
        if fwd is None or bwd is None:
            return None
        return [s.nested("forward/", "forward_layer.") for s in fwd] + [
            s.nested("backward/", "backward_layer.") for s in bwd
        ]
    return None


def weight_count(layer, specs) -> int:
    """How many weights of `layer` go on a codebook: those of `specs` (a
    path's `weight_specs(layer)`)."""
    total = 0
    for spec in specs or ():
        owner, attr = resolve(layer, spec.path)
        total += int(np.prod(getattr(owner, attr).shape))
    return total


def _child(obj, segment: str):
    """`obj.<segment>`, else the sub-layer of `obj` named `segment`."""
    if segment.isdigit() and isinstance(obj, list | tuple):
        return obj[int(segment)]
    value = getattr(obj, segment, None)
    if value is not None:
        return value
    for sub in _held(obj):
        if hasattr(sub, "weights") and getattr(sub, "name", None) == segment:
            return sub
    return None


def _held(obj):
    """What `obj` holds that may be a sub-layer: tf.Module's `submodules`
    (tf_keras), torch.nn.Module's `children()` (Keras 3 on PyTorch), and its
    attributes (Keras 3 keeps attention's projections as `_query_dense`, ...)."""
    yield from getattr(obj, "submodules", ())
    children = getattr(obj, "children", None)
    if callable(children):
        yield from children()
    yield from vars(obj).values()


def resolve(layer, path: str, prepare=None):
    """`(owner, attribute)` of the weight at `path` (e.g. `"cell.kernel"`);
    `prepare(obj)` runs on each object on the way (a path's own step, such as
    building attention's projections).

    Raises:
        ValueError: When a segment of `path` names nothing.
    """
    obj = layer
    *parents, attr = path.split(".")
    for i, segment in enumerate(parents):
        if prepare is not None:
            prepare(obj)
        child = _child(obj, segment)
        if child is None:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}): weight path {path!r} does not "
                f"resolve: {'.'.join(parents[: i + 1])!r} is neither an attribute nor a "
                f"sub-layer name. Its weights are {[w.name for w in layer.weights]}."
            )
        obj = child
    if not hasattr(obj, attr):
        where = f"{'.'.join(parents)!r} of " if parents else ""
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no weight attribute {attr!r} "
            f"on {where}it (path {path!r}); its weights are {[w.name for w in layer.weights]}."
        )
    return obj, attr


def vector_length(name: str, input_shape) -> int:
    """The length of a `DiscreteMultiplier`'s vector: the input's last dimension.

    Raises:
        ValueError: When that dimension is unknown.
    """
    dim = input_shape[-1]
    if dim is None:
        raise ValueError(
            f"DiscreteMultiplier {name!r} needs a known last input dimension. "
            f"Received: input_shape={input_shape}"
        )
    return int(dim)


def is_keras3_object(obj) -> bool:
    """True if `obj` is a Keras 3 model or layer (what `tf.keras` gives in TF >= 2.16).

    No import: a Keras 3 object exists only once Keras 3 (`keras`) is in
    `sys.modules`; a tf_keras one is not a Keras 3 layer.
    """
    keras3 = sys.modules.get("keras")
    if keras3 is None or (type(obj).__module__ or "").startswith("tf_keras"):
        return False
    layers = getattr(keras3, "layers", None)
    return layers is not None and isinstance(obj, layers.Layer)
