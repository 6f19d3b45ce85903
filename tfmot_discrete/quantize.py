"""`quantize_model`, `strip_quantization` and `quantize_scope`."""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot

from tfmot_discrete import _keras, configs, scheme
from tfmot_discrete import quantizers as quantizers_mod
from tfmot_discrete._keras import keras
from tfmot_discrete.layers import DiscreteMultiplier

_qk = tfmot.quantization.keras
_QuantizeAnnotate = _qk.quantize_annotate_layer(keras.layers.Dense(1)).__class__


def quantize_scope(*args):
    """A custom-object scope holding TF-MOT's and this package's objects.

    Load saved QAT models inside it:

        with td.quantize_scope():
            model = tf_keras.models.load_model("qat.keras")

    Args:
        *args: Dicts of further `{name: object}` to add, as in TF-MOT.
    """
    ours = {
        "CodebookQuantizer": quantizers_mod.CodebookQuantizer,
        "DiscreteQuantizeConfig": configs.DiscreteQuantizeConfig,
        "DiscreteMultiplier": DiscreteMultiplier,
        "tfmot_discrete>CodebookQuantizer": quantizers_mod.CodebookQuantizer,
        "tfmot_discrete>DiscreteQuantizeConfig": configs.DiscreteQuantizeConfig,
        "tfmot_discrete>DiscreteMultiplier": DiscreteMultiplier,
    }
    return _qk.quantize_scope(ours, *args)


def _check_model(model, argname="model"):
    if _keras.is_keras3_object(model):
        return _keras.from_keras3(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argname}` must be a tf_keras Sequential or Functional model (or a Keras 3 "
            f"one, which is rebuilt in tf_keras). Received: {argname} of type "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    if not isinstance(model, keras.Sequential) and not model._is_graph_network:  # noqa: SLF001
        raise ValueError(
            f"`{argname}` is a subclassed model ({type(model).__name__}); only Sequential "
            "and Functional models can be quantized, because TF-MOT rebuilds the model "
            "from its config. Rewrite it with the Functional API, or quantize its layers "
            "one by one with `tfmot.quantization.keras.quantize_annotate_layer`."
        )
    if not model.built:
        raise ValueError(
            f"`{argname}` ({model.name!r}) is not built: give it an `Input` or call "
            "`model.build(input_shape)` before quantizing it."
        )
    return model


_FLOAT_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.PReLU,
)


def _plan(model, spec):
    """`{layer name: QuantizeConfig}` for the layers to annotate."""
    plan = {}
    explicit = isinstance(spec, list)
    names = [layer.name for layer in model.layers]
    if explicit:
        for rx, pattern, _ in spec:
            if not any(rx.fullmatch(n) for n in names):
                raise ValueError(
                    f"Quantizer mapping key {pattern!r} matches no layer of model "
                    f"{model.name!r} (matched with re.fullmatch). Layer names: {names}"
                )
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        found, value = scheme.lookup(spec, layer.name)
        if not found or value is None:
            continue
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Layer {layer.name!r} is a nested model ({type(layer).__name__}); flatten it "
                "into the outer model first: TF-MOT cannot quantize models inside models."
            )
        if isinstance(value, _qk.QuantizeConfig):
            plan[layer.name] = value
            continue
        if isinstance(layer, DiscreteMultiplier):
            if explicit and value != layer.quantizer:
                raise ValueError(
                    f"Layer {layer.name!r} is a DiscreteMultiplier: it carries its own "
                    f"codebook ({layer.quantizer!r}); set it there instead of in the mapping."
                )
            continue
        cfg = configs.config_for_layer(layer, value)
        if cfg is None:
            # Layers with nothing to quantize (Flatten, ReLU, pooling) and the
            # normalization layers, which stay float by design, pass quietly.
            if explicit and layer.trainable_weights and not isinstance(layer, _FLOAT_LAYERS):
                raise ValueError(
                    f"Layer {layer.name!r} of class {type(layer).__name__} cannot be quantized "
                    "to a codebook automatically (supported: "
                    f"{sorted(c.__name__ for c in configs.LAYER_WEIGHTS)}, DiscreteMultiplier). "
                    "Map its name to a `td.DiscreteQuantizeConfig({'<weight attribute>': "
                    "quantizer})` naming the attribute its `call` reads, e.g. "
                    f"{{{layer.name!r}: td.DiscreteQuantizeConfig({{'kernel': q}})}}."
                )
            continue
        plan[layer.name] = cfg
    return plan


def quantize_model(model, quantizer):
    """Makes every supported layer train its weights to a codebook.

    Annotates the layers and calls TF-MOT's `quantize_apply` with a
    `DiscreteQuantizeScheme`; the result trains with `fit` like any model.

    Args:
        model: A built tf_keras Sequential or Functional model, or a Keras 3
            model (rebuilt in tf_keras with the same weights).
        quantizer: A `CodebookQuantizer` (or a list of values, or a preset
            name) for every supported layer, or a mapping
            `{layer-name regex: quantizer | DiscreteQuantizeConfig | None}`;
            regexes are matched against the whole name, first match wins.

    Returns:
        A new tf_keras model whose quantized layers are `QuantizeWrapperV2`s.

    Raises:
        ValueError: For a model that cannot be quantized, a mapping key that
            matches no layer, or a mapped layer we cannot quantize.

    Example:

    >>> import tfmot_discrete as td
    >>> model = td.keras.Sequential([td.keras.Input((8,)), td.keras.layers.Dense(4)])
    >>> qat = td.quantize_model(model, td.ternary())
    >>> qat.layers[0].name
    'quant_dense'
    """
    model = _check_model(model)
    spec = scheme.resolve_quantizer_spec(quantizer)
    plan = _plan(model, spec)
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
        plan_scheme = scheme.DiscreteQuantizeScheme(quantizer)
        plan_scheme.get_quantize_registry()._config_for_unlisted = False  # noqa: SLF001
        qat = _qk.quantize_apply(annotated, scheme=plan_scheme)
    for layer in qat.layers:
        if isinstance(layer, _qk.QuantizeWrapper):
            fix_weight_order(layer)
    return qat


def fix_weight_order(wrapper):
    """Puts a `QuantizeWrapperV2`'s weights in the order a fresh build gives.

    After `quantize_apply`, the wrapper lists the inner layer's weights once
    more, first; a wrapper rebuilt from its config (as `load_model` does) does
    not, so saved weights would load into the wrong variables.
    """
    fresh = []
    for weight, _, qvars in getattr(wrapper, "_weight_vars", []):
        fresh.extend(v for v in (qvars or {}).values() if v.trainable)
        fresh.append(weight)
    tw = wrapper._trainable_weights  # noqa: SLF001
    if len(tw) > len(fresh) and [id(v) for v in tw[len(tw) - len(fresh) :]] == [
        id(v) for v in fresh
    ]:
        del tw[: len(tw) - len(fresh)]


def _weight_key(variable) -> str:
    return variable.name.split(":")[0].split("/")[-1]


def _wrapper_values(wrapper) -> dict[str, np.ndarray]:
    """`{weight name: value}` of a wrapper's inner layer, quantized ones projected.

    The inner layer's own weight list misses the weights the wrapper replaced
    with tensors, so look in both places, by name.
    """
    out = {_weight_key(w): w.numpy() for w in wrapper.layer.weights}
    for weight, quantizer, qvars in getattr(wrapper, "_weight_vars", []):
        out[_weight_key(weight)] = np.asarray(quantizer(weight, False, weights=qvars))
    return out


def _baked_multiplier(layer: DiscreteMultiplier):
    q = layer.quantizer
    values = np.asarray(layer.quantized_kernel(False))
    if q.scale is None:
        new_q = q
    else:
        s = float(np.asarray(q.quantized_scale(layer.kernel, layer._quantizer_vars)).reshape(-1)[0])  # noqa: SLF001
        new_q = quantizers_mod.CodebookQuantizer(
            np.asarray(q.values) * s, gradient=q.gradient, per_channel_axis=[]
        )
    cfg = layer.get_config()
    cfg["values"] = new_q
    return DiscreteMultiplier.from_config(cfg), [values]


def strip_quantization(model):
    """Returns the plain model: wrappers removed, weights projected.

    Every quantized weight is replaced by its projected value (codebook value
    times channel scale); the result has the layer classes and names of the
    model that was quantized and needs no custom scope for its standard layers.

    Args:
        model: A model from `quantize_model` or `quantize_apply`.

    Returns:
        A new tf_keras model.
    """
    model = _check_model(model)
    new_weights = {}

    def _strip(layer):
        if isinstance(layer, _qk.QuantizeWrapper):
            inner = layer.layer
            new_weights[inner.name] = _wrapper_values(layer)
            return inner.__class__.from_config(inner.get_config())
        if isinstance(layer, DiscreteMultiplier):
            new_layer, vals = _baked_multiplier(layer)
            new_weights[layer.name] = {"kernel": vals[0]}
            return new_layer
        if isinstance(
            layer, _qk.quantize_layer.QuantizeLayer if hasattr(_qk, "quantize_layer") else ()
        ):
            raise ValueError("Models with a QuantizeLayer cannot be stripped.")
        new_weights[layer.name] = layer.get_weights()
        return layer.__class__.from_config(layer.get_config())

    with quantize_scope():
        plain = keras.models.clone_model(model, clone_function=_strip)
    for layer in plain.layers:
        values = new_weights.get(layer.name)
        if not layer.weights or values is None:
            continue
        if isinstance(values, dict):
            values = [values[_weight_key(w)] for w in layer.weights]
        layer.set_weights(values)
    return plain


def is_quantized(model) -> bool:
    return any(
        isinstance(layer, _qk.QuantizeWrapper | DiscreteMultiplier) for layer in model.layers
    )
