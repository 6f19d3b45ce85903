"""Models used as layers: their layers moved into the outer model's graph.

TF-MOT wraps the layers of the model it is given, not those of a model inside
it (a backbone inside a classifier). `flatten` rewrites the outer model's
config so that the inner model's layers are called where the inner model was,
then copies every weight: the same function, with every layer on top.
"""

from __future__ import annotations

import copy

from tfmot_discrete.tfk._keras import keras

_MODEL_CLASSES = ("Functional", "Sequential", "Model")


def has_nested_models(model) -> bool:
    """Whether a layer of `model` is itself a model."""
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def all_layers(model) -> list:
    """The layers of `model` and, in place of each nested model, its layers (recursively)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(all_layers(layer))
        else:
            out.append(layer)
    return out


def all_models(model) -> list:
    """The models used as layers inside `model`, recursively."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += [layer, *all_models(layer)]
    return out


def _is_ref(x) -> bool:
    return (
        isinstance(x, list)
        and len(x) in (3, 4)
        and isinstance(x[0], str)
        and isinstance(x[1], int)
        and isinstance(x[2], int)
    )


def _map_refs(obj, fn):
    """`obj` with every tensor reference `[layer, node, tensor(, kwargs)]` replaced by `fn(ref)`."""
    if _is_ref(obj):
        new = list(fn(obj[:3]))
        if len(obj) == 4:
            new.append(_map_refs(obj[3], fn))
        return new
    if isinstance(obj, list):
        return [_map_refs(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _map_refs(v, fn) for k, v in obj.items()}
    return obj


def _as_functional(entry_config: dict, class_name: str, build_config=None) -> dict:
    """A Sequential model's config in the Functional form (inputs, nodes, outputs)."""
    if class_name != "Sequential":
        return copy.deepcopy(entry_config)
    entries = copy.deepcopy(entry_config["layers"])
    if not entries or entries[0]["class_name"] != "InputLayer":
        shape = (build_config or {}).get("input_shape")
        if shape is None:
            raise ValueError(
                f"Nested Sequential model {entry_config.get('name')!r} has no input shape; "
                "give it an `Input` so that its layers can be quantized."
            )
        name = f"{entry_config.get('name', 'sequential')}_input"
        entries.insert(
            0,
            {
                "class_name": "InputLayer",
                "config": {"batch_input_shape": list(shape), "name": name},
            },
        )
    layers, previous = [], None
    for e in entries:
        name = e["config"]["name"]
        e = dict(e, name=name, inbound_nodes=[] if previous is None else [[[previous, 0, 0, {}]]])
        layers.append(e)
        previous = name
    return {
        "name": entry_config.get("name"),
        "layers": layers,
        "input_layers": [[layers[0]["name"], 0, 0]],
        "output_layers": [[previous, 0, 0]],
    }


def _flat_config(config: dict, taken: set) -> tuple[dict, dict]:
    """A Functional config with every nested model's layers inlined, and
    `{layer name in it: path of names to the original layer}`.

    `taken` holds the layer names in use at this level; an inner layer whose
    name is taken is renamed `<nested model>_<name>`.
    """
    replaced = {}  # nested model name -> its output references
    layers = []
    origins = {}

    def redirect(ref):
        if ref[0] in replaced:
            return replaced[ref[0]][ref[2]]
        return ref

    for entry in config["layers"]:
        entry = dict(entry, inbound_nodes=_map_refs(entry["inbound_nodes"], redirect))
        if entry["class_name"] not in _MODEL_CLASSES:
            layers.append(entry)
            origins[entry["name"]] = (entry["name"],)
            continue
        if len(entry["inbound_nodes"]) != 1:
            raise ValueError(
                f"Nested model {entry['name']!r} is called {len(entry['inbound_nodes'])} times; "
                "only a nested model called once can be quantized (its layers are moved "
                "into the outer model). Rebuild the model so that each call has its own layers."
            )
        inner = _as_functional(entry["config"], entry["class_name"], entry.get("build_config"))
        own = {e["name"] for e in inner["layers"] if e["class_name"] not in _MODEL_CLASSES}
        inner, inner_origins = _flat_config(inner, own)
        sources = [ref[:3] for ref in entry["inbound_nodes"][0]]
        inputs = {ref[0]: sources[i] for i, ref in enumerate(inner["input_layers"])}
        names = {}
        for e in inner["layers"]:
            if e["name"] in inputs:
                continue
            new = e["name"]
            while new in taken:
                new = f"{entry['name']}_{new}"
            taken.add(new)
            names[e["name"]] = new
            origins[new] = (entry["name"], *inner_origins[e["name"]])

        def inner_ref(ref, inputs=inputs, names=names):
            if ref[0] in inputs:
                return list(inputs[ref[0]])
            return [names.get(ref[0], ref[0]), ref[1], ref[2]]

        for e in inner["layers"]:
            if e["name"] in inputs:
                continue
            e = copy.deepcopy(e)
            e["inbound_nodes"] = _map_refs(e["inbound_nodes"], inner_ref)
            e["name"] = names[e["name"]]
            e["config"]["name"] = e["name"]
            layers.append(e)
        replaced[entry["name"]] = [inner_ref(list(ref)) for ref in inner["output_layers"]]
    out = dict(config)
    out["layers"] = layers
    out["output_layers"] = _map_refs([list(r) for r in config["output_layers"]], redirect)
    return out, origins


def flatten(model, scope=None):
    """`model` with the layers of every model inside it moved into its graph.

    Args:
        model: A built tf_keras Sequential or Functional model.
        scope: A context manager factory for deserialization (custom objects).

    Returns:
        `model` itself when no layer of it is a model; else a new Functional
        model computing the same function, whose layers are the outer
        model's and the nested models' (recursively), with the same weights,
        trainable flags and names (an inner name that is already taken gets
        the prefix `<nested model name>_`).

    Raises:
        ValueError: For a nested model called more than once.
    """
    if not has_nested_models(model):
        return model
    kind = "Sequential" if isinstance(model, keras.Sequential) else "Functional"
    config = _as_functional(model.get_config(), kind, {"input_shape": model.input_shape})
    taken = {e["name"] for e in config["layers"] if e["class_name"] not in _MODEL_CLASSES}
    flat, origins = _flat_config(config, taken)
    if scope is None:
        new = keras.Model.from_config(flat)
    else:
        with scope():
            new = keras.Model.from_config(flat)
    for layer in new.layers:
        if layer.name not in origins or isinstance(layer, keras.layers.InputLayer):
            continue  # a Sequential's input is no layer of it (`get_layer` does not find it)
        source = model
        for name in origins[layer.name]:
            source = source.get_layer(name)
        if layer.weights:
            layer.set_weights(source.get_weights())
        layer.trainable = source.trainable
    return new
