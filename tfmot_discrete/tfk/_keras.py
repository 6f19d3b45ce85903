"""The one module that imports Keras.

TF-MOT 0.8 works on Keras 2 (`tf_keras`). Every other module of the package
takes `keras` from here.
"""

from __future__ import annotations

import tf_keras as keras

from tfmot_discrete.core.specs import is_keras3_object

register = keras.saving.register_keras_serializable

__all__ = ["from_keras3", "is_keras3_object", "keras", "register"]


def called_by_keras3(inputs) -> bool:
    """True when a tf_keras layer is being called from a Keras 3 model: on
    Keras 3 symbolic tensors or another backend's arrays, or inside a Keras 3
    layer's `call` (a subclassed `keras.Model`, which Keras 3 runs eagerly on
    TensorFlow tensors). Such a layer's weights are not the Keras 3 model's:
    nothing would train them. Keras 3 keeps the call in progress in its
    private `global_state` ("current_call_ctx"); no public API tells it."""
    import sys  # noqa: PLC0415

    keras3 = sys.modules.get("keras")
    if keras3 is None or not hasattr(keras3, "KerasTensor"):
        return False  # Keras 3 not imported: no Keras 3 model exists
    from keras.src.backend.common import global_state  # noqa: PLC0415

    if global_state.get_global_attribute("current_call_ctx") is not None:
        return True
    import tensorflow as tf  # noqa: PLC0415

    for x in tf.nest.flatten(inputs):
        if isinstance(x, keras3.KerasTensor) or type(x).__module__.split(".")[0] in (
            "jax",
            "jaxlib",
            "torch",
        ):
            return True
    return False


_LEGACY_HINT = (
    "TF-MOT needs Keras 2 (tf_keras). Either build the model with `tf_keras` "
    "(`import tf_keras as keras`), or set the environment variable "
    "TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported, so that "
    "`tf.keras` is tf_keras."
)

# Base-layer keyword arguments tf_keras accepts on every layer.
_BASE_KWARGS = {
    "name",
    "trainable",
    "dtype",
    "input_shape",
    "batch_input_shape",
    "batch_size",
    "input_dim",
    "dynamic",
    "autocast",
    "input_length",
}


# Keyword arguments a tf_keras class takes from its `**kwargs` (not in its
# signature): a Keras 3 `Bidirectional` writes its layers' `zero_output_for_mask`.
_POPPED_KWARGS = {"RNN": {"zero_output_for_mask"}}


def _bridge_error(layer, why):
    return ValueError(
        f"Cannot rebuild Keras 3 layer {layer.name!r} ({type(layer).__module__}."
        f"{type(layer).__name__}) in tf_keras: {why}. {_LEGACY_HINT}"
    )


def _drop_defaults(cls, cfg, what):
    """Drop Keras 3-only keys that hold a do-nothing value; refuse the rest."""
    import inspect  # noqa: PLC0415

    accepted = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(klass.__init__).parameters)
        accepted |= _POPPED_KWARGS.get(klass.__name__, set())
    if cls is not None and issubclass(cls, keras.layers.Layer):
        accepted |= _BASE_KWARGS
    for key in list(cfg):
        if key in accepted:
            continue
        if cfg[key] in (None, False, 0, {}, [], ()):
            del cfg[key]
        else:
            raise ValueError(f"{what} setting {key}={cfg[key]!r} has no tf_keras equivalent")
    return cfg


def _convert_value(value):
    """Keras 3 serialized objects -> the tf_keras form (recursively)."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            name = value["class_name"]
            if name in ("DTypePolicy", "FloatDTypePolicy"):
                return value["config"]["name"]
            cfg = _convert_value(value["config"])
            for ns in (keras.initializers, keras.regularizers, keras.constraints, keras.layers):
                cls = getattr(ns, name, None)
                if isinstance(cls, type) and isinstance(cfg, dict):
                    cfg = _drop_defaults(cls, cfg, name)
                    break
            return {"class_name": name, "config": cfg}
        return {k: _convert_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_convert_value(v) for v in value)
    return value


def _tf_keras_layer(layer3):
    cls_name = type(layer3).__name__
    module = type(layer3).__module__ or ""
    if not module.startswith("keras.src.layers") or cls_name in ("Lambda", "TFSMLayer"):
        raise _bridge_error(layer3, "it is not a standard Keras layer that tf_keras also has")
    cls = getattr(keras.layers, cls_name, None)
    if cls is None:
        raise _bridge_error(layer3, f"tf_keras has no layer class {cls_name}")
    try:
        cfg = _drop_defaults(cls, _convert_value(layer3.get_config()), "its")
    except ValueError as e:
        raise _bridge_error(layer3, str(e)) from e
    if cls_name == "MultiHeadAttention":
        # tf_keras builds its projections from shapes in the config; Keras 3
        # keeps them in its build config (no key shape: the value's).
        shapes = (layer3.get_build_config() or {}).get("shapes_dict", {})
        value = shapes.get("value_shape")
        cfg["query_shape"] = shapes.get("query_shape")
        cfg["value_shape"] = value
        cfg["key_shape"] = shapes.get("key_shape", value)
    try:
        return cls.from_config(cfg)
    except Exception as e:
        raise _bridge_error(layer3, f"tf_keras rejected its config ({e})") from e


def from_keras3(model3):
    """Rebuilds a built Keras 3 Sequential or Functional model in tf_keras,
    layer by layer, with the same names and weights.

    Raises:
        ValueError: Naming the first layer that cannot be bridged, and how to
            use tf_keras instead.
    """
    import keras as keras3  # noqa: PLC0415

    if not isinstance(model3, keras3.Model):
        raise ValueError(f"Expected a model, got a Keras 3 {type(model3).__name__}. {_LEGACY_HINT}")
    is_seq = isinstance(model3, keras3.Sequential)
    is_functional = type(model3).__name__ == "Functional" or is_seq
    if not is_functional:
        raise ValueError(
            f"Keras 3 model {model3.name!r} is subclassed ({type(model3).__name__}): only "
            f"Sequential and Functional models can be rebuilt in tf_keras. {_LEGACY_HINT}"
        )
    if not model3.built or not getattr(model3, "inputs", None):
        raise ValueError(
            f"Keras 3 model {model3.name!r} is not built: give it a `keras.Input`. {_LEGACY_HINT}"
        )
    new_layers = {}
    if is_seq:
        model = _rebuild_sequential(model3, new_layers)
    else:
        model = _rebuild_functional(model3, new_layers)
    for layer3, layer in new_layers.values():
        weights = layer3.get_weights()
        if len(weights) != len(layer.weights):
            raise _bridge_error(
                layer3,
                f"it has {len(weights)} weights but its tf_keras twin has {len(layer.weights)}",
            )
        layer.set_weights(weights)
    return model


def _rebuild_sequential(model3, new_layers):
    """The tf_keras twin of a Keras 3 Sequential model; fills `new_layers`."""
    x3 = model3.inputs[0]
    inp = keras.Input(batch_shape=tuple(x3.shape), dtype=x3.dtype, name=x3.name or None)
    for layer3 in model3.layers:
        new_layers[layer3.name] = (layer3, _tf_keras_layer(layer3))
    return keras.Sequential(
        [inp] + [new_layers[l3.name][1] for l3 in model3.layers], name=model3.name
    )


def _rebuild_functional(model3, new_layers):
    """The tf_keras twin of a Keras 3 Functional model, replaying its graph
    from the config node by node; fills `new_layers`."""
    config = model3.get_config()
    tensors = {}
    for entry in config["layers"]:
        name = entry["name"] if "name" in entry else entry["config"]["name"]
        layer3 = model3.get_layer(name)
        if type(layer3).__name__ == "InputLayer":
            c = entry["config"]
            t = keras.Input(batch_shape=tuple(c["batch_shape"]), dtype=c.get("dtype"), name=name)
            tensors[(name, 0, 0)] = t
            continue
        layer = _tf_keras_layer(layer3)
        new_layers[name] = (layer3, layer)
        for node_index, node in enumerate(entry["inbound_nodes"]):
            args = _map_tensors(node.get("args", []), tensors)
            kwargs = _map_tensors(node.get("kwargs", {}), tensors)
            out = layer(*args, **kwargs)
            flat = out if isinstance(out, list | tuple) else [out]
            for i, t in enumerate(flat):
                tensors[(name, node_index, i)] = t

    def _ref(spec):
        return tensors[(spec[0], spec[1], spec[2])]

    ins = config["input_layers"]
    outs = config["output_layers"]
    ins = [_ref(s) for s in ins] if isinstance(ins[0], list) else _ref(ins)
    outs = [_ref(s) for s in outs] if isinstance(outs[0], list) else _ref(outs)
    return keras.Model(ins, outs, name=model3.name)


def _map_tensors(obj, tensors):
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            hist = obj["config"]["keras_history"]
            return tensors[(hist[0], hist[1], hist[2])]
        return {k: _map_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(v, tensors) for v in obj)
    return obj
