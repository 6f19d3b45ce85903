"""`DiscreteQuantizeConfig`: which weights of a layer go to which codebook.

A weight is named by an attribute path on the layer, read and written on the
object whose `call` reads it (TF-MOT's own RNN config does the same for the
cells of recurrent layers): `"kernel"`, `"cell.recurrent_kernel"`,
`"forward_layer.cell.kernel"`, `"query.kernel"`. Each segment but the last is
an attribute of the object, else a sub-layer of that name.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow_model_optimization as tfmot

from tfmot_discrete.tfk import compat, int8, sublayers
from tfmot_discrete.tfk import quantizers as quantizers_mod
from tfmot_discrete.tfk._keras import keras, register

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

# Recurrent layers whose cell holds `kernel` and `recurrent_kernel` (inputs x
# gates*units, units x gates*units): one output channel per gate unit.
RECURRENT_LAYERS = {
    _L.LSTM: _L.LSTMCell,
    _L.GRU: _L.GRUCell,
    _L.SimpleRNN: _L.SimpleRNNCell,
    _L.ConvLSTM1D: None,
    _L.ConvLSTM2D: None,
    _L.ConvLSTM3D: None,
}
_RECURRENT_WEIGHTS = ("kernel", "recurrent_kernel")
# `keras.layers.RNN(cell)` with one of these cells reads the same weights.
_STANDARD_CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell")
# The tables by class name (what `weight_specs` matches in a namespace).
_RECURRENT_CELLS = {
    c.__name__: None if cell is None else cell.__name__ for c, cell in RECURRENT_LAYERS.items()
}

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
    [c.__name__ for c in (*LAYER_WEIGHTS, *RECURRENT_LAYERS)]
    + ["Bidirectional", "EinsumDense", "MultiHeadAttention", "RNN", "TimeDistributed"]
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


def weight_specs(layer, layers=None, plain=None) -> list[WeightSpec] | None:
    """The weights of `layer` that go on a codebook, or None for a layer we
    do not know.

    Subclasses of a known layer class are not matched (their `call` may read
    weights differently): give them a `DiscreteQuantizeConfig` explicitly. A
    user's own tf_keras layer (a direct `Layer` subclass) gets the weights of
    the standard sub-layers it holds (`sublayers.nested_specs`).

    Args:
        layer: A layer.
        layers: The `layers` namespace whose classes are matched, by name and
            then exactly. Defaults to tf_keras's; `tfmot_discrete.keras3`
            passes Keras 3's, so that both paths read this one table.
        plain: `{class: {weight: axes}}` of the layers holding their own
            weights, in that namespace. Defaults to `LAYER_WEIGHTS`.
    """
    layers = _L if layers is None else layers
    plain = LAYER_WEIGHTS if plain is None else plain
    cls = type(layer)
    if cls is not getattr(layers, cls.__name__, None):
        if layers is _L and sublayers.is_custom_layer(layer):  # a user's layer of sub-layers
            return sublayers.nested_specs(layer, lambda sub: weight_specs(sub, layers, plain))
        return None  # not a class of this namespace (a subclass, a custom layer)
    if cls in plain:
        return [WeightSpec(a, a, tuple(axes)) for a, axes in plain[cls].items()]
    name = cls.__name__

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


def quantizable_weights(layer) -> dict | None:
    """`{weight name: channel axes}` for a layer we know, else None."""
    specs = weight_specs(layer)
    return None if specs is None else {s.name: list(s.axes) for s in specs}


def weight_count(layer, specs=None) -> int:
    """How many weights of `layer` go on a codebook: those of `specs`, by
    default `weight_specs(layer)`."""
    total = 0
    for spec in (weight_specs(layer) if specs is None else specs) or ():
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


def resolve(layer, path: str):
    """`(owner, attribute)` of the weight at `path` (e.g. `"cell.kernel"`).

    Raises:
        ValueError: When a segment of `path` names nothing.
    """
    obj = layer
    *parents, attr = path.split(".")
    for i, segment in enumerate(parents):
        if isinstance(obj, keras.layers.MultiHeadAttention):
            _build_projections(obj)
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


def _build_projections(mha) -> None:
    """Builds the projections of a MultiHeadAttention restored from its config.

    `MultiHeadAttention.from_config` makes its `EinsumDense` projections but
    builds them only at the first call, while a wrapper reads their kernels
    when it is built; their input shapes are the ones the layer stored.
    """
    for projection, shape in compat.attention_projections(mha) or ():
        if not projection.built:
            projection.build(shape)


def weight_name(layer, path: str) -> str:
    """The name of the weight at `path` in reports and mapping keys.

    The name of the table (`weight_specs`) for a known layer, else the path
    with `/` between segments.

    Example:

    >>> weight_name(keras.layers.LSTM(2), "cell.recurrent_kernel")
    'recurrent_kernel'
    """
    for spec in weight_specs(layer) or ():
        if spec.path == path:
            return spec.name
    return path.replace(".", "/")


@register(package="tfmot_discrete")
class DiscreteQuantizeConfig(_QuantizeConfig):
    """Quantizes named weights of a layer to codebooks; activations stay float.

    Args:
        weight_quantizers: `{attribute path: CodebookQuantizer}`, e.g.
            `{"kernel": td.binary()}`, or for weights held by a cell or a
            sub-layer `{"cell.kernel": q, "cell.recurrent_kernel": q}`,
            `{"query.kernel": q}`. Each segment but the last is an attribute
            (or the name of a sub-layer) of the object before it. The weight
            is read with `getattr` and the quantized tensor written back with
            `setattr` on its owner before the layer's `call`, so it must be
            what that owner's `call` reads.
        activation_quantizer: Optional TF-MOT quantizer for the layer's
            output (used for simulated 8-bit activations). Defaults to `None`.

    Example:

    >>> cfg = DiscreteQuantizeConfig({"cell.kernel": quantizers_mod.binary()})
    >>> DiscreteQuantizeConfig.from_config(cfg.get_config()) == cfg
    True
    """

    def __init__(self, weight_quantizers=None, activation_quantizer=None):
        weight_quantizers = dict(weight_quantizers or {})
        for attr, q in list(weight_quantizers.items()):
            if not isinstance(attr, str) or not re.fullmatch(r"\w+(\.\w+)*", attr):
                raise ValueError(
                    "`weight_quantizers` keys must be weight attribute paths (str), such as "
                    "'kernel' or 'cell.recurrent_kernel'. "
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

    def weight_names(self, layer) -> list[str]:
        """The name of each quantized weight, in `get_weights_and_quantizers` order."""
        return [weight_name(layer, path) for path in self.weight_quantizers]

    def get_weights_and_quantizers(self, layer):
        sublayers.build_sublayers(layer)  # a custom layer rebuilt from its config
        out = []
        for path, q in self.weight_quantizers.items():
            owner, attr = resolve(layer, path)
            weight = getattr(owner, attr)
            if isinstance(q, quantizers_mod.CodebookQuantizer):
                quantizers_mod.clip_to_codebook(weight, q)
            out.append((weight, q))
        return out

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self.weight_quantizers):
            raise ValueError(
                f"Expected {len(self.weight_quantizers)} quantized weights for layer "
                f"{layer.name!r}, got {len(quantize_weights)}."
            )
        for path, w in zip(self.weight_quantizers, quantize_weights, strict=True):
            owner, attr = resolve(layer, path)
            setattr(owner, attr, w)

    def restore_weights(self, layer, latent_weights) -> None:
        """Puts the latent variables back where `set_quantize_weights` wrote
        tensors, without Keras' attribute tracking (the layer's weight lists
        stay as they are)."""
        for path, w in zip(self.weight_quantizers, latent_weights, strict=True):
            owner, attr = resolve(layer, path)
            compat.rebind_attribute(owner, attr, w)

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


def _weight_quantizer(spec: WeightSpec, quantizer):
    if isinstance(quantizer, str) and quantizer == int8.INT8:
        return int8.quantizer_for(list(spec.axes))
    return quantizer.with_channel_axes(list(spec.axes))


def config_for_layer(layer, quantizer, activation_quantizer=None):
    """The `DiscreteQuantizeConfig` for a known layer type, or None.

    `quantizer` is a `CodebookQuantizer`, or `"int8"` for TF-MOT's 8-bit
    weight fake quantization (`int8.Int8WeightQuantizer`), for every weight
    of the layer; or a dict `{weight name: quantizer | "int8" | None}` (a
    weight it leaves out or maps to None stays float). None too when no
    weight is left to quantize.
    """
    specs = weight_specs(layer)
    if specs is None:
        return None
    per_weight = {}
    for spec in specs:
        q = quantizer.get(spec.name) if isinstance(quantizer, dict) else quantizer
        if q is not None:
            per_weight[spec.path] = _weight_quantizer(spec, q)
    if not per_weight:
        return None
    return DiscreteQuantizeConfig(per_weight, activation_quantizer=activation_quantizer)
