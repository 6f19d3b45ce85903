"""Keras 3 models used as layers: their layers moved into the outer model's graph.

What `tfmot_discrete.tfk.nested` does on tf_keras, on a Keras 3 model: the outer
graph is replayed node by node from its config, and where a nested model was
called its own layers are called instead (recursively), copies of them with
the same weights. The QAT model, `strip_quantization`'s result and the
exported file then hold no model inside a model, and mapping keys name the
inner layers directly.
"""

from __future__ import annotations

from tfmot_discrete.keras3._k3 import keras


def has_nested_models(model) -> bool:
    """Whether a layer of `model` is itself a model."""
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def _refs(refs) -> list[tuple]:
    """A config's `input_layers`/`output_layers`: one reference or a list of them."""
    if refs and isinstance(refs[0], list | tuple):
        return [tuple(r) for r in refs]
    return [tuple(refs)]


def _map_tensors(obj, tensors):
    """A node's serialized arguments with each Keras tensor looked up in `tensors`."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return tensors[tuple(obj["config"]["keras_history"])]
        return {k: _map_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(v, tensors) for v in obj)
    return obj


class _Flattener:
    """Replays models layer by layer; `copies` pairs each new layer with its source."""

    def __init__(self, taken):
        self.taken = set(taken)
        self.copies = {}  # id(source layer) -> (source, copy, trainable)
        self.called = set()

    def layer_copy(self, layer, prefix, trainable):
        found = self.copies.get(id(layer))
        if found is not None:
            return found[1]
        config = layer.get_config()
        if prefix:  # a nested model's layer: keep its name unless it is taken
            name = layer.name
            while name in self.taken:
                name = f"{prefix}_{name}"
            self.taken.add(name)
            config["name"] = name
        new = layer.__class__.from_config(config)
        self.copies[id(layer)] = (layer, new, trainable and layer.trainable)
        return new

    def call(self, layer, args, kwargs, prefix, trainable):
        if not isinstance(layer, keras.Model):
            return self.layer_copy(layer, prefix, trainable)(*args, **kwargs)
        if id(layer) in self.called:
            raise ValueError(
                f"Nested model {layer.name!r} is called more than once; only a nested model "
                "called once can be quantized (its layers are moved into the outer model). "
                "Rebuild the model so that each call has its own layers."
            )
        self.called.add(id(layer))
        inputs = keras.tree.flatten((args, kwargs))
        return self.replay(layer, inputs, layer.name, trainable and layer.trainable)

    def replay(self, model, inputs, prefix, trainable):
        """`model`'s outputs, computed from `inputs` by copies of its layers."""
        if isinstance(model, keras.Sequential):
            x = inputs[0]
            for layer in model.layers:
                x = self.call(layer, (x,), {}, prefix, trainable)
            return x
        config = model.get_config()
        tensors = dict(zip(_refs(config["input_layers"]), inputs))
        for entry in config["layers"]:
            layer = model.get_layer(entry["name"])
            if isinstance(layer, keras.layers.InputLayer):
                continue
            for index, node in enumerate(entry["inbound_nodes"]):
                args = _map_tensors(node.get("args", []), tensors)
                kwargs = _map_tensors(node.get("kwargs", {}), tensors)
                out = self.call(layer, args, kwargs, prefix, trainable)
                for i, t in enumerate(keras.tree.flatten(out)):
                    tensors[(entry["name"], index, i)] = t
        outs = [tensors[ref] for ref in _refs(config["output_layers"])]
        return outs if isinstance(config["output_layers"][0], list | tuple) else outs[0]


def flatten(model):
    """`tfmot_discrete.tfk.nested.flatten` for a built Keras 3 Sequential or
    Functional model: `model` itself without nested models, else a new
    Functional model of the same function, weights, trainable flags and
    names (a taken inner name gets the prefix `<nested model name>_`).

    Raises:
        ValueError: For a nested model called more than once.
    """
    if not has_nested_models(model):
        return model
    names = [layer.name for layer in model.layers if not isinstance(layer, keras.Model)]
    flat = _Flattener(names)
    if isinstance(model, keras.Sequential):
        input_names = [model.inputs[0].name]
    else:
        input_names = [ref[0] for ref in _refs(model.get_config()["input_layers"])]
    inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, input_names)
    ]
    outputs = flat.replay(model, inputs, "", model.trainable)
    new = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    for source, copy, trainable in flat.copies.values():
        if source.weights:
            copy.set_weights(source.get_weights())
        copy.trainable = trainable
    return new
