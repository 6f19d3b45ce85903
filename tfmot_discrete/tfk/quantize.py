"""`quantize_model`, `strip_quantization` and `quantize_scope`, and the steps
they take on a model (weight order, initial learned scales and 8-bit ranges)."""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import rules as core_rules
from tfmot_discrete.core.specs import weights_class
from tfmot_discrete.tfk import (
    _keras,
    annotate,
    compat,
    configs,
    int8,
    nested,
    recurrent,
    rescale,
    scheme,
    wrapper,
)
from tfmot_discrete.tfk import quantizers as quantizers_mod
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.compat import QuantizeLayer
from tfmot_discrete.tfk.layers import DiscreteMultiplier
from tfmot_discrete.tfk.quantizers import weight_key
from tfmot_discrete.tfk.weights import (
    check_finite,
    codebook_items,
    int8_items,
    warn_frozen_layers,
    warn_partial_codebooks,
    wrapper_weights,
)

_qk = tfmot.quantization.keras
_QuantizeAnnotate = _qk.quantize_annotate_layer(keras.layers.Dense(1)).__class__


class _FixedQuantizeLayer(QuantizeLayer):
    """TF-MOT's `QuantizeLayer`, marked built after `build`.

    Loading a `.keras` file builds each layer from its build config and then
    again when the graph is called, since `QuantizeLayer.build` leaves
    `built` unset: the second build makes 5 variables where 3 were saved.
    `quantize_scope` loads `QuantizeLayer`s as this class.
    """

    def build(self, input_shape):
        if self.built:
            return
        super().build(input_shape)
        self.built = True


# Keras names saved state after the class name: keep TF-MOT's.
_FixedQuantizeLayer.__name__ = _FixedQuantizeLayer.__qualname__ = "QuantizeLayer"


#: This package's serializable classes: registering a new one means adding it here.
SERIALIZABLE = (
    quantizers_mod.CodebookQuantizer,
    configs.DiscreteQuantizeConfig,
    DiscreteMultiplier,
    int8.Int8WeightQuantizer,
    recurrent.Int8LSTM,
    recurrent.Int8GRU,
)


def _types_dict() -> dict:
    """`{name: class}` of `SERIALIZABLE`, under the plain and the registered name."""
    out = {}
    for cls in SERIALIZABLE:
        out[cls.__name__] = cls
        out[f"tfmot_discrete>{cls.__name__}"] = cls
    return out


@contextlib.contextmanager
def quantize_scope(*args):
    """A custom-object scope holding TF-MOT's and this package's objects.

    Load saved QAT models inside it:

        with td.quantize_scope():
            model = tf_keras.models.load_model("qat.keras")

    Args:
        *args: Dicts of further `{name: object}` to add, as in TF-MOT.
    """
    with _qk.quantize_scope(_types_dict(), *args):
        # Entered last, so it wins over TF-MOT's entry of the same name.
        with keras.utils.custom_object_scope(
            {"QuantizeLayer": _FixedQuantizeLayer, "QuantizeWrapperV2": wrapper.QuantizeWrapper}
        ):
            yield


def check_model(model, argname="model"):
    """`model` if it is a built tf_keras Sequential or Functional model (with
    no subclassed model inside), else a `ValueError` naming the way out."""
    if _keras.is_keras3_object(model):
        raise ValueError(
            f"`{argname}` is a Keras 3 model, and this is the tf_keras (TF-MOT) path: pass it "
            "to `td.quantize_model` / `td.strip_quantization`, which keep it a Keras 3 model, "
            f"or rebuild it in tf_keras first with `td.to_tf_keras({argname})`. Received: "
            f"{argname} of type {type(model).__module__}.{type(model).__name__}"
        )
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argname}` must be a tf_keras Sequential or Functional model. Received: "
            f"{argname} of type {type(model).__module__}.{type(model).__name__}"
        )
    for m in [model, *nested.all_models(model)]:
        if not isinstance(m, keras.Sequential) and not compat.is_graph_network(m):
            where = "" if m is model else f" holds a subclassed model, {m.name!r}, as a layer"
            raise ValueError(
                f"`{argname}` ({model.name!r}){where or ' is a subclassed model'} "
                f"({type(m).__name__}): TF-MOT's `quantize_apply` rebuilds a model from its "
                "config, which a subclassed model's `call` is not part of, so it cannot be "
                "quantized on the tf_keras path. Either rewrite it with the Functional API "
                "(`keras.Input` and layer calls; a user's layer made of standard sub-layers "
                "may stay as it is), or build it in Keras 3 (`import keras`), where "
                "`td.quantize_model` takes subclassed models and reaches the layers they hold."
            )
    if not model.built:
        raise ValueError(
            f"`{argname}` ({model.name!r}) is not built: give it an `Input` or call "
            "`model.build(input_shape)` before quantizing it."
        )
    return model


ACTIVATIONS = (None, "int8")


def _activation_quantizer():
    """TF-MOT's 8-bit activation quantizer, as its default scheme uses it."""
    return _qk.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False
    )


def _own_graph(model) -> tuple[dict, dict]:
    """`(producers, consumers)`: `{id(layer): layers}` of `model`'s own graph
    (a layer's nodes also hold those of every other model built on it, such
    as an earlier `quantize_model` of the same float model)."""
    own = compat.model_nodes(model)
    producers, consumers = {}, {}
    for layer in model.layers:
        for node in layer.inbound_nodes:
            if id(node) in own:
                inbound = node.inbound_layers
                producers.setdefault(id(layer), []).extend(
                    inbound if isinstance(inbound, list | tuple) else [inbound]
                )
        consumers[id(layer)] = [n.outbound_layer for n in layer.outbound_nodes if id(n) in own]
    return producers, consumers


def _add_activation_quantizers(model, plan):
    """8-bit output fake-quant where the int8 TFLite model quantizes
    (`core.rules.outputs_to_quantize`, the rule of both paths)."""
    producers, consumers = _own_graph(model)
    quantized = core_rules.outputs_to_quantize(model.layers, producers, consumers)
    for layer in model.layers:
        if id(layer) not in quantized:
            continue
        cfg = plan.get(layer.name)
        if cfg is None:
            plan[layer.name] = configs.DiscreteQuantizeConfig({}, _activation_quantizer())
        elif isinstance(cfg, configs.DiscreteQuantizeConfig):
            cfg.activation_quantizer = _activation_quantizer()


def quantize_model(model, quantizer, activations=None, strict=False):
    """Makes every supported layer train its weights to a codebook.

    Annotates the layers and calls TF-MOT's `quantize_apply` with a
    `DiscreteQuantizeScheme`; the result trains with `fit` like any model.

    Args:
        model: A built tf_keras Sequential or Functional model; through
            `td.quantize_model`, also a Keras 3 one (a Keras 3 model back,
            see `tfmot_discrete.keras3.quantize_model`).
        quantizer: A `CodebookQuantizer` (or a list of values, or a preset
            name) for every supported layer, or a mapping
            `{layer-name regex: quantizer | "int8" | DiscreteQuantizeConfig |
            None}`; regexes are matched against the whole name, first match
            wins. `"int8"` trains the layer's weights with TF-MOT's 8-bit
            fake quantization (symmetric, per output channel, narrow range;
            `td.int8.Int8WeightQuantizer`), e.g. for the first and last
            layers; `None` leaves the layer float.
        activations: `None` (activations stay float) or `"int8"`: also
            simulate 8-bit activations with TF-MOT's quantizers (an input
            `QuantizeLayer`, and a moving-average fake-quant on every output
            that a full-int8 TFLite model quantizes, after BatchNorm/ReLU
            fusion), so a `full_int8` export agrees with what was trained.
            Defaults to `None`.
        strict: Raise instead of logging when a layer keeps a kernel-like
            weight (trainable, rank >= 2) float. Defaults to `False`.

    Layers whose weights a recurrent cell or a sub-layer holds are quantized
    on that object: the kernel and recurrent kernel of `LSTM`, `GRU`,
    `SimpleRNN` and `ConvLSTM1D/2D/3D` (also inside `Bidirectional`), the
    query, key, value and output projections of `MultiHeadAttention`,
    `EinsumDense`, and `TimeDistributed` around a supported layer. A model
    used as a layer (a backbone) is flattened first: its layers become the
    returned model's, under their own names. A mapping key names a layer
    (`"lstm"`) or one weight of it (`"lstm/recurrent_kernel"`,
    `"mha/query/kernel"`, `"bidirectional/forward/kernel"`); the first key
    that names a weight decides it. Every layer that keeps kernel-like
    weights float gets one `weights.QuantizationWarning` saying which and
    why; biases and normalization parameters stay float by design.

    With `scale=None` the codebook values are used exactly as given, and a
    trained layer's weights (|w| ~ 0.05) would all project to the values
    nearest zero. When a BatchNormalization directly follows a Dense, Conv or
    DepthwiseConv layer quantized that way, and the weights are at least
    `rescale.RESCALE_MIN_FACTOR` times smaller than the codebook, each output
    channel's latent weights and bias are multiplied by
    `mean|codebook| / mean|w_c|` and the BatchNormalization's moving
    statistics adjusted to match, so the model computes the same function
    and its weights spread over the whole codebook (`rescale` module). The
    model passed in is not changed. Without a normalization after the layer
    the weights are kept as they are: use `scale="mean_abs"` (or
    `"learned"`) for such layers when starting from a trained model.

    Returns:
        A new tf_keras model whose quantized layers are `QuantizeWrapperV2`s.

    Raises:
        ValueError: For a model that cannot be quantized, a mapping key that
            matches no layer, a mapped layer we cannot quantize, or (with
            `strict=True`) a kernel-like weight that would stay float.

    Warns:
        weights.QuantizationWarning: Once per layer set to `trainable=False` (or in a
            model set so), saying which of its weights train, and once per
            `scale=None` weight that projects to only some of its codebook's
            values, in a layer no BatchNormalization follows; once per layer
            that keeps kernel-like weights float (unless `strict=True`, which
            raises).

    Example:

    >>> import tfmot_discrete as td
    >>> model = td.keras.Sequential([td.keras.Input((8,)), td.keras.layers.Dense(4, name="dense")])
    >>> qat = td.quantize_model(model, td.ternary())
    >>> qat.layers[0].name
    'quant_dense'
    """
    if activations not in ACTIVATIONS:
        raise ValueError(
            f"`activations` must be one of {list(ACTIVATIONS)}. Received: activations={activations!r}"
        )
    if not isinstance(strict, bool):
        raise ValueError(f"`strict` must be a bool. Received: strict={strict!r}")
    model = check_model(model)
    spec = scheme.resolve_quantizer_spec(quantizer)
    model = nested.flatten(model, scope=quantize_scope)
    if activations == "int8":
        with quantize_scope():
            model = recurrent.with_int8_state(model)
    if rescale.plan(model, spec):
        model = _copy(model)
        rescale.rescale_for_codebook(model, spec)
    layer_plan = annotate.plan(model.layers, spec)
    annotate.report(layer_plan.float_weights, strict)
    plan = layer_plan.configs
    if activations == "int8":
        _add_activation_quantizers(model, plan)
    if not plan:
        # Nothing to wrap (e.g. only DiscreteMultipliers, which quantize themselves).
        with quantize_scope():
            clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    def _annotate(layer):
        if layer.name in plan:
            return _QuantizeAnnotate(layer, quantize_config=plan[layer.name])
        return layer

    with quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=_annotate)
        plan_scheme = scheme.DiscreteQuantizeScheme(
            quantizer, quantize_inputs=activations == "int8"
        )
        plan_scheme.get_quantize_registry().config_for_unlisted = False
        qat = _qk.quantize_apply(annotated, scheme=plan_scheme)
    wrapper.adopt(qat)
    initialize_learned_scales(qat)
    initialize_int8_ranges(qat)
    warn_frozen_layers(model, qat)
    warn_partial_codebooks(model, qat)
    return qat


def _copy(model):
    """A clone of `model` with its weights, so that the caller's stays as it was."""
    with quantize_scope():
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def initialize_learned_scales(model) -> None:
    """Sets every `learned` codebook scale from its latent weights, now.

    `quantize_model` calls it. Call it yourself after `quantize_apply` when
    training under a `tf.distribute` strategy, whose replicas cannot do it
    lazily inside the train step.
    """
    for item in codebook_items(model):
        item.quantizer.initialize_scale(item.latent, item.qvars)


def initialize_int8_ranges(model) -> None:
    """Sets every 8-bit weight's range from its current values, now.

    `quantize_model` calls it, so that a model fresh from `quantize_model`
    already computes with its weights rounded to 8 bits (TF-MOT starts the
    range at ±6 and sets it at the first training step).
    """
    for item in int8_items(model):
        item.quantizer(tf.convert_to_tensor(item.latent), True, weights=item.qvars)


def _wrapper_values(wrapper, plain) -> list[np.ndarray]:
    """The values for `plain.weights`, a fresh copy of a wrapper's inner
    layer: quantized weights projected, the others as they are.

    The inner layer's own weight list misses the weights the wrapper replaced
    with tensors. A quantized weight is found on `plain` by its attribute
    path; the other weights keep their order in both layers.
    """
    config = wrapper.quantize_config
    items = wrapper_weights(wrapper)
    if not isinstance(config, configs.DiscreteQuantizeConfig):
        by_name = {
            weight_key(weight): np.asarray(quantizer(weight, False, weights=qvars))
            for weight, quantizer, qvars in items
        }
        for w in wrapper.layer.weights:
            by_name.setdefault(weight_key(w), w.numpy())
        return [by_name[weight_key(w)] for w in plain.weights]
    projected = {}
    for path, (weight, quantizer, qvars) in zip(config.weight_quantizers, items, strict=True):
        owner, attr = configs.resolve(plain, path)
        projected[id(getattr(owner, attr))] = np.asarray(quantizer(weight, False, weights=qvars))
    latent = {id(weight) for weight, _, _ in items}
    rest = iter([w.numpy() for w in wrapper.layer.weights if id(w) not in latent])
    return [projected[id(w)] if id(w) in projected else next(rest) for w in plain.weights]


def _baked_multiplier(layer: DiscreteMultiplier):
    values = np.asarray(layer.quantized_kernel(False))
    cfg = layer.get_config()
    cfg["quantizer"] = layer.folded_quantizer()
    return DiscreteMultiplier.from_config(cfg), [values]


def strip_quantization(model):
    """Returns the plain model: wrappers removed, weights projected.

    Every quantized weight is replaced by its projected value (codebook value
    times channel scale); the result has the layer classes and names of the
    model that was quantized and needs no custom scope for its standard layers.
    A model that held another model as a layer comes back with that model's
    layers in its own graph, as `quantize_model` flattened it.

    Args:
        model: A model from `quantize_model` or `quantize_apply`.

    Returns:
        A new tf_keras model.

    Raises:
        ValueError: For a weight or codebook scale that is NaN or inf, or a
            codebook scale that is zero or negative (see `check_finite`).
    """
    model = check_model(model)
    check_finite(model)
    # Each layer's new weights are computed when they are set, one layer at a
    # time: a large model's weights are not held twice more.
    new_weights = {}
    dropped = []

    def _strip(layer):
        if isinstance(layer, _qk.QuantizeWrapper):
            inner = layer.layer
            new_weights[inner.name] = lambda plain: _wrapper_values(layer, plain)
            # An `Int8LSTM` comes back an `LSTM`: its ranges are the QAT model's.
            return weights_class(inner).from_config(inner.get_config())
        if isinstance(layer, DiscreteMultiplier):
            new_layer, vals = _baked_multiplier(layer)
            new_weights[layer.name] = lambda plain: [vals[0]]
            return new_layer
        if isinstance(layer, QuantizeLayer):
            dropped.append(layer.name)
        if weights_class(layer) is not type(layer):  # an unwrapped `Int8LSTM`
            new_weights[layer.name] = lambda plain, layer=layer: layer.cell.get_weights()
            return weights_class(layer).from_config(layer.get_config())
        new_weights[layer.name] = lambda plain, layer=layer: layer.get_weights()
        return layer.__class__.from_config(layer.get_config())

    with quantize_scope():
        plain = keras.models.clone_model(model, clone_function=_strip)
    for layer in plain.layers:
        values_of = new_weights.pop(layer.name, None)
        if not layer.weights or values_of is None:
            continue
        layer.set_weights(values_of(layer))
    if dropped:
        plain = _without_layers(plain, set(dropped))
    return plain


def _without_layers(model, names):
    """The model with single-input pass-through layers `names` taken out."""
    config = model.get_config()
    if isinstance(model, keras.Sequential):
        config["layers"] = [e for e in config["layers"] if e["config"].get("name") not in names]
        with quantize_scope():
            new = keras.Sequential.from_config(config)
    else:
        source = {}
        for entry in config["layers"]:
            if entry["name"] in names:
                source[entry["name"]] = entry["inbound_nodes"][0][0][:3]

        def _rewire(ref):
            while ref[0] in source:
                ref = list(source[ref[0]]) + list(ref[3:])
            return ref

        layers = []
        for entry in config["layers"]:
            if entry["name"] in names:
                continue
            entry["inbound_nodes"] = [
                [_rewire(list(ref)) for ref in node] for node in entry["inbound_nodes"]
            ]
            layers.append(entry)
        config["layers"] = layers
        config["output_layers"] = [_rewire(list(ref)) for ref in config["output_layers"]]
        with quantize_scope():
            new = keras.Model.from_config(config)
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new
