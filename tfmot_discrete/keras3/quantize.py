"""`quantize_model` and `strip_quantization` for Keras 3 models."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmot_discrete.core import checks, rules, specs
from tfmot_discrete.core.quantizers import CodebookQuantizer, indices_of
from tfmot_discrete.keras3 import _k3, nested, reach, saving, tree
from tfmot_discrete.keras3 import activations as k3_activations
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.keras3._k3 import is_graph_model, keras, ops
from tfmot_discrete.keras3.activations import ActivationQuantizer
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.wrapper import (
    QuantizeWrapper,
    quantizer_config,
    weight_specs,
    wrap_place,
)

#: The values of `quantize_model`'s `activations`.
ACTIVATIONS = (None, "int8")


def check_model(model, argname="model"):
    """Raises unless `model` is a built Keras 3 model (of any class)."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argname}` must be a Keras 3 model. Received: "
            f"{argname} of type {type(model).__module__}.{type(model).__name__}"
        )
    if not model.built or (is_graph_model(model) and not getattr(model, "inputs", None)):
        raise ValueError(
            f"`{argname}` ({model.name!r}) is not built: give it a `keras.Input`, or call it "
            "on a batch of data, before quantizing it."
        )
    return model


def check_graph_model(model, argname="model"):
    """Raises unless `model` is a built Keras 3 Sequential or Functional model
    (what a tf_keras rebuild takes)."""
    check_model(model, argname)
    if not is_graph_model(model):
        raise ValueError(
            f"`{argname}` is a {type(model).__name__} ({type(model).__module__}), not a "
            "Sequential or Functional model: only those are rebuilt in tf_keras "
            f"(`td.to_tf_keras`). Received: {argname}={model.name!r}"
        )
    return model


def _fresh(layer):
    return layer.__class__.from_config(layer.get_config())


def _fresh_built(layer):
    """A copy of `layer` from its config, built as `layer` is (a
    `MultiHeadAttention` builds from its query and value shapes, which a
    wrapper's `build` does not get)."""
    new = _fresh(layer)
    build_config = layer.get_build_config()
    if build_config is not None:
        new.build_from_config(build_config)
    return new


@dataclasses.dataclass(frozen=True)
class Edit:
    """What `clone` changes in a graph besides its layers.

    Attributes:
        skip: Tells a layer (of the source model) to leave out; its first
            input takes its place.
        after: Gives the layer to call on a source layer's output, or None.
        on_input: Gives the layer to call on an input of the clone (before
            any layer takes it), or None.
    """

    skip: object = lambda layer: False
    after: object = lambda layer: None
    on_input: object = lambda tensor: None


#: The clone leaves the model's `ActivationQuantizer`s out.
WITHOUT_ACTIVATIONS = Edit(skip=lambda layer: isinstance(layer, ActivationQuantizer))


def clone(model, clone_function, edit=None):
    """`keras.models.clone_model(model, clone_function=...)`, keeping the names
    of a Functional model's inputs (a plain clone renames them), with the
    changes of `edit` (an `Edit`) made along. The clone is of `model`'s float
    class: the wrappers below a QAT model's config are not cloned with it."""
    out = _clone(model, clone_function, edit)
    out.__class__ = saving.float_class(out)  # (Keras clones with the model's class)
    return out


def _clone(model, clone_function, edit):
    if isinstance(model, keras.Sequential):
        if edit is None:
            return keras.models.clone_model(model, clone_function=clone_function)
        return _clone_sequential(model, clone_function, edit)
    refs = model.get_config()["input_layers"]
    names = [r[0] for r in refs] if isinstance(refs[0], list | tuple) else [refs[0]]
    inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, names)
    ]
    call_function = None
    if edit is not None:
        sources, copy = {}, clone_function

        def clone_function(layer):
            new = copy(layer)
            sources[id(new)] = layer
            return new

        call_function = _editing_call(edit, inputs, sources)
    return keras.models.clone_model(
        model,
        input_tensors=inputs if len(inputs) > 1 else inputs[0],
        clone_function=clone_function,
        call_function=call_function,
    )


def _editing_call(edit, inputs, sources):
    """The `call_function` of a Functional clone making `edit`'s changes
    (`sources`: each new layer's id -> the layer it copies)."""
    fed = {}
    for tensor in inputs:
        layer = edit.on_input(tensor)
        fed[id(tensor)] = layer(tensor) if layer is not None else tensor

    def call(layer, *args, **kwargs):
        source = sources[id(layer)]
        args, kwargs = keras.tree.map_structure(
            lambda t: fed.get(id(t), t), (args, kwargs), none_is_leaf=True
        )
        if edit.skip(source):
            return args[0]
        out = layer(*args, **kwargs)
        extra = edit.after(source)
        return extra(out) if extra is not None else out

    return call


def _clone_sequential(model, clone_function, edit):
    """A Sequential clone with `edit`'s changes (Keras takes no
    `call_function` for a Sequential model: the new layer list is written
    out)."""
    first = _k3.tracked_layers(model)[0]
    if not isinstance(first, keras.layers.InputLayer):
        raise ValueError(
            f"Sequential model {model.name!r} has no `keras.Input`; give it one to quantize it "
            "with activations='int8'."
        )
    source = model.inputs[0]
    tensor = keras.Input(batch_shape=tuple(source.shape), dtype=source.dtype, name=first.name)
    layers = [tensor]
    extra = edit.on_input(tensor)
    if extra is not None:
        layers.append(extra)
    for layer in model.layers:
        if edit.skip(layer):
            continue
        layers.append(clone_function(layer))
        extra = edit.after(layer)
        if extra is not None:
            layers.append(extra)
    return keras.Sequential(layers, name=model.name)


def quantize_model(model, quantizer, activations=None, strict=False, in_place=False):
    """`td.quantize_model` for a Keras 3 model of any class: a Keras 3 model back.

    Every layer `QuantizeWrapper` can wrap (`wrapper.weight_specs`), wherever
    it sits in the layer tree, is replaced where its parent holds it by a
    `QuantizeWrapper` named `"quant_" + name` (`reach`, `tree`). The model
    trains with `keras.ops` on the TensorFlow, JAX and PyTorch backends.

    Two ways of putting the wrappers in, by model class:

    - Sequential and Functional models are rebuilt from their config (a
      model used as a layer is flattened first, `keras3.nested`), their own
      layers replaced by wrappers in the new graph; layers below them (a
      user's layer of `Dense` sub-layers) get theirs in the rebuilt layer.
      The rebuild stays for these models because the wrappers are then
      nodes of the graph: the model's config holds them, so a `.keras` file
      of the QAT model reloads as a QAT model. (Swapping a node's layer in a
      built graph leaves Keras's serialized node references behind.)
    - Any other model (subclassed `keras.Model`, Functional subclasses such
      as KerasHub backbones and tasks) is copied through its config and
      weights (or, with `in_place=True`, changed itself), then each layer is
      replaced in its parent: attribute, list or dict attribute, graph node.

    Args:
        model: A built Keras 3 model.
        quantizer: As in `td.quantize_model`; mapping keys also match paths
            in the layer tree and Keras 3 weight paths (`reach`).
        activations: `None` (float activations) or `"int8"`: an
            `ActivationQuantizer` after each float input and each layer
            whose output a full-integer file quantizes, ranges tracked in
            training as TF-MOT tracks them (`keras3.activations`); a
            `full_int8` export takes those ranges. Sequential and
            Functional models of Keras layers (the models tf_keras
            rebuilds, which that export converts).
        strict: With True, kernel-like weights that would stay float raise.
            Defaults to `False` (a `QuantizationWarning`).
        in_place: Wrap the layers of `model` itself rather than of a copy.
            Needed for a subclassed model that cannot be re-created from its
            config. Graph models are always rebuilt. Defaults to `False`.

    Raises:
        ValueError: For bad arguments, an unbuilt model, a model that cannot
            be copied (naming `in_place=True`), and as `td.quantize_model`.
    """
    if activations not in ACTIVATIONS:
        raise ValueError(
            f"`activations` must be one of {list(ACTIVATIONS)}. Received: activations={activations!r}"
        )
    check_model(model)
    if not isinstance(strict, bool):
        raise ValueError(f"`strict` must be a bool. Received: strict={strict!r}")
    if not isinstance(in_place, bool):
        raise ValueError(f"`in_place` must be a bool. Received: in_place={in_place!r}")
    graph = is_graph_model(model)
    if graph and in_place:
        raise ValueError(
            f"`in_place=True` is for models that are not Sequential or Functional; "
            f"{model.name!r} is {type(model).__name__}, which is rebuilt (the float model is "
            "never changed). Received: in_place=True"
        )
    if activations is not None and not graph:
        raise ValueError(
            f"`activations='int8'` takes Sequential and Functional models; {model.name!r} is "
            f"a {type(model).__name__}. Quantize it with activations=None (its full-integer "
            "file then calibrates its activation ranges on representative data). "
            f"Received: activations={activations!r}"
        )
    spec = rules.resolve_quantizer_spec(quantizer)
    if graph:
        model = nested.flatten(model)
    found = reach.plan(model, spec, graph)
    rules.report(found.float_weights, strict)
    if graph:
        return _quantize_graph(model, found, activations)
    qat = model if in_place else copy_model(model)
    targets = reach.places(qat, graph=False) if qat is not model else found.places
    _wrap_places(found, targets, skip_top=None)
    _record_wrappers(qat, graph=False)
    return qat


def _wrap_places(found, targets, skip_top):
    """Wraps, in the tree of `targets` (places matching `found.places` one to
    one), the layers `found` names; a place whose parent is `skip_top` (a
    graph model wrapping its own layers) is left out."""
    for i, value in found.wrap.items():
        source, place = found.places[i], targets[i]
        if place.parent is skip_top:
            continue
        if type(source.layer) is not type(place.layer):
            raise ValueError(
                f"The copy of layer {source.path!r} is a {type(place.layer).__name__}, not a "
                f"{type(source.layer).__name__}: its class builds different sub-layers from "
                "its config. Pass in_place=True."
            )
        wrap_place(place, value, initialize=True)


def _record_wrappers(qat, graph):
    """Lists the wrappers `qat`'s tree holds below its config, and gives
    `qat` the class that saves them (`keras3.saving.keep_wrappers`)."""
    own = {id(layer) for layer in qat.layers} if graph else set()
    record = [
        {"place": i, "quantizer": quantizer_config(p.layer.quantizer)}
        for i, p in enumerate(reach.places(qat, graph))
        if isinstance(p.layer, QuantizeWrapper) and id(p.layer) not in own
    ]
    if record:
        saving.keep_wrappers(qat, record)


def _quantize_graph(model, found, activations):
    top = {
        found.places[i].layer.name: v
        for i, v in found.wrap.items()
        if found.places[i].parent is model
    }

    def _clone(layer):
        if layer.name in top:
            return QuantizeWrapper(_fresh_built(layer), top[layer.name])
        return _fresh(layer)

    qat = clone(model, _clone, _activation_edit(model) if activations == "int8" else None)
    for layer in qat.layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        if isinstance(inner, keras.layers.InputLayer | ActivationQuantizer):
            continue
        source = model.get_layer(inner.name)
        if source.weights:
            inner.set_weights(source.get_weights())
        if isinstance(layer, QuantizeWrapper):
            for var, state in layer.states:
                k3q.initialize(state, var.value)
        elif isinstance(layer, DiscreteMultiplier):
            for (_, src), (_, dst) in zip(_state_vars(source), _state_vars(layer)):
                dst.assign(src.value)
    if len(top) < len(found.wrap):
        by_name = {getattr(layer, "layer", layer).name: layer for layer in qat.layers}
        copies = [by_name[layer.name] for layer in model.layers]
        copy = _CopyOf(qat, model, copies)
        _wrap_places(found, reach.places(copy, graph=True), skip_top=copy)
        _record_wrappers(qat, graph=True)
    return qat


def _activation_edit(model) -> Edit:
    """The `Edit` putting `ActivationQuantizer`s in a clone of `model`.

    Raises:
        ValueError: For a layer of a class that is not Keras's own (its
            tf_keras twin, which the export converts, cannot be built).
    """
    for layer in model.layers:
        module = type(layer).__module__
        if not (module.startswith("keras.") or isinstance(layer, DiscreteMultiplier)):
            raise ValueError(
                f"`activations='int8'` takes models of Keras's own layers; layer {layer.name!r} "
                f"is a {module}.{type(layer).__name__}. Quantize with activations=None (its "
                "full-integer file then calibrates its activation ranges on representative "
                "data). Received: activations='int8'"
            )
    quantized = k3_activations.outputs_to_quantize(model)

    def after(layer):
        if id(layer) not in quantized:
            return None
        return ActivationQuantizer(name=k3_activations.PREFIX + layer.name)

    def on_input(tensor):
        if not k3_activations.is_float_input(tensor):
            return None
        return ActivationQuantizer("all_values", name=k3_activations.PREFIX + tensor.name)

    return Edit(after=after, on_input=on_input)


class _CopyOf:
    """Stands for a rebuilt graph model in `reach.places`: its layers in the
    order of the source model's, so that the places of both match one to one."""

    def __init__(self, model, source, layers):
        self.model, self.layers, self.name = model, layers, source.name


def _state_vars(layer):
    state = getattr(layer, "state", None)
    return sorted(state.variables.items()) if state is not None else []


def _quantized_layers(model) -> list:
    """The wrappers and multipliers anywhere in `model`'s layer tree, in
    tracking order (a model's own layers in their order)."""
    quantized = (QuantizeWrapper, DiscreteMultiplier)
    places = tree.walk(model, lambda layer: isinstance(layer, quantized))
    return [p.layer for p in places if isinstance(p.layer, quantized)]


def is_quantized(model) -> bool:
    """True when a Keras 3 model holds wrappers or DiscreteMultipliers (anywhere)."""
    return bool(_quantized_layers(model))


def _nested_label(model, variable, weight) -> str:
    """The layer part of a nested weight's label: its variable path without
    the model's name and the weight's name (unique in the model, where layer
    names need not be)."""
    path = reach.relative_path(variable, model)
    if path.endswith(f"/{weight}"):
        return path[: -len(weight) - 1]
    return path.rsplit("/", 1)[0]


def items(model) -> list[tuple[str, str, object, k3q.WeightState]]:
    """`(layer label, weight name, latent variable, WeightState)` per quantized
    weight anywhere in the layer tree. A model's own wrapped layers are
    labelled by their inner layer's name; deeper ones by the path of their
    weight (`"block/dense_1"`), so that no two labels are alike."""
    out = []
    own = {id(layer) for layer in model.layers}
    for layer in _quantized_layers(model):
        if not layer.built:
            continue
        pairs = (
            layer.states
            if isinstance(layer, QuantizeWrapper)
            else [(layer.kernel, dataclasses.replace(layer.state, name="kernel"))]
        )
        base = layer.layer.name if isinstance(layer, QuantizeWrapper) else layer.name
        for var, state in pairs:
            label = base if id(layer) in own else _nested_label(model, var, state.name)
            if isinstance(layer, DiscreteMultiplier):
                state = layer.state
            out.append(
                (label, state.name if isinstance(layer, QuantizeWrapper) else "kernel", var, state)
            )
    return out


def plain_values(layer) -> list[np.ndarray]:
    """The values of `layer`'s weights as its float twin holds them: every
    wrapper's latent weights projected, the wrappers' own variables (scales,
    8-bit ranges) left out, in the order of the twin's `weights`."""
    wrappers = [w for w in _k3.flatten_layers(layer) if isinstance(w, QuantizeWrapper)]
    if isinstance(layer, QuantizeWrapper):
        wrappers.append(layer)
    states = {id(var): state for w in wrappers for var, state in w.states}
    extra = {id(v) for w in wrappers for _, st in w.states for v in st.variables.values()}
    return [
        projected(states[id(w)], w.value) if id(w) in states else npy(w)
        for w in layer.weights
        if id(w) not in extra
    ]


def projected(state, latent) -> np.ndarray:
    """A weight's quantized value, as inference computes it (NumPy)."""
    return ops.convert_to_numpy(k3q.quantize(state, ops.convert_to_tensor(latent), False))


def strip_quantization(model):
    """`td.strip_quantization` for a Keras 3 model: the plain Keras 3 model.

    Wrappers are replaced by their inner layers holding the projected weights;
    a `DiscreteMultiplier` keeps its class, with its vector projected and its
    codebook folded with the scale; `ActivationQuantizer`s are left out.

    Raises:
        ValueError: For a NaN or inf weight or scale.
    """
    check_model(model)
    check_finite(model)
    new_weights = {}

    def _strip(layer):
        if isinstance(layer, QuantizeWrapper):
            inner = layer.layer
            states = {id(var): state for var, state in layer.states}
            new_weights[inner.name] = [
                projected(states[id(w)], w.value) if id(w) in states else npy(w)
                for w in inner.weights
            ]
            return _fresh(inner)
        if isinstance(layer, DiscreteMultiplier):
            cfg = layer.get_config()
            cfg["values"] = layer.folded_quantizer().get_config()
            new_weights[layer.name] = [projected(layer.state, layer.kernel.value)]
            return DiscreteMultiplier.from_config(cfg)
        if getattr(layer, "weights", None):  # (a graph may hold plain operations)
            new_weights[layer.name] = plain_values(layer)
        return _fresh(layer)

    if not is_graph_model(model):
        return _strip_by_config(model)
    plain = clone(model, _strip, WITHOUT_ACTIVATIONS)
    for layer in plain.layers:
        values = new_weights.get(layer.name)
        if values and layer.weights:
            if isinstance(layer, DiscreteMultiplier):
                layer.kernel.assign(values[0])
            else:
                layer.set_weights(values)
    return plain


def _strip_by_config(model):
    """A model that is not Sequential or Functional: its class re-created from
    its config (which holds no wrappers), with the projected weights."""
    plain = _from_config(model)
    values = plain_values(model)
    if [tuple(w.shape) for w in plain.weights] != [v.shape for v in values]:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) re-created from its config does not "
            "hold the weights of the quantized model (without its wrappers), so it cannot be "
            "stripped into a new model. Strip the float model you quantized in place: "
            "`td.strip_quantization` needs a class whose config re-creates its layers."
        )
    plain.set_weights(values)
    return plain


def _from_config(model):
    """A new, built model of `model`'s class from its config.

    Raises:
        ValueError: Naming `in_place=True`, when the class cannot do it.
    """
    try:
        new = saving.float_class(model).from_config(saving.float_config(model))
        build_config = model.get_build_config()
        if build_config:
            new.build_from_config(build_config)
            # A subclassed model is built by a symbolic run, which makes its
            # layers' weights but leaves its own flag down (`load_weights`
            # then refuses it).
            new.built = new.built or bool(new.weights)
    except (NotImplementedError, TypeError, ValueError, KeyError) as e:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) cannot be re-created from its config "
            f"({type(e).__name__}: {e}). Quantize it in place with "
            "`td.quantize_model(model, ..., in_place=True)` (its layers are wrapped, the model "
            "object stays), or give the class a `get_config` returning its `__init__` arguments."
        ) from e
    return new


def check_finite(model) -> None:
    """`core.checks.check_finite` on a Keras 3 model: every weight finite, every
    codebook scale finite and positive.

    Raises:
        ValueError: Naming the layer, the weight and the first bad entry.
    """
    codebook = (
        checks.CodebookWeightValues(
            layer,
            weight,
            npy(var),
            state.quantizer.scale,
            lambda var=var, state=state: k3q.scale_of(state, var.value),
        )
        for layer, weight, var, state in items(model)
        if isinstance(state.quantizer, CodebookQuantizer)
    )
    every = ((layer.name, w.name, npy(w)) for layer in model.layers for w in layer.weights)
    checks.check_finite(codebook, every)


def npy(variable) -> np.ndarray:
    return ops.convert_to_numpy(variable.value)


@dataclasses.dataclass(frozen=True)
class CodebookWeight:
    """One codebook weight of a Keras 3 model, read as NumPy arrays.

    Attributes:
        label: `"<layer>/<weight>"`, as tables and logs show it.
        quantizer: Its `CodebookQuantizer` (with the weight's channel axes).
        latent: The latent (float) values that training updates.
        projected: The values inference computes with (codebook x scale).
        scale: The scale the weight was projected with (ones without one).
        codebook: The codebook it projects to (the learned values with
            `learn_values=True`; the quantizer's when None).
    """

    label: str
    quantizer: CodebookQuantizer
    latent: np.ndarray
    projected: np.ndarray
    scale: np.ndarray
    codebook: object = None

    @property
    def codes(self) -> np.ndarray:
        """The index of the codebook value each weight projects to (read
        through `core.quantizers.indices_of`, as on the tf_keras path)."""
        return indices_of(self.quantizer, self.projected, self.scale, self.codebook)


def codebook_weights(model) -> list[CodebookWeight]:
    """One `CodebookWeight` per codebook weight of a Keras 3 model (its 8-bit
    weights left out), layer by layer."""
    out = []
    for layer, weight, var, state in items(model):
        if isinstance(state.quantizer, CodebookQuantizer):
            value = var.value
            out.append(
                CodebookWeight(
                    f"{layer}/{weight}",
                    state.quantizer,
                    ops.convert_to_numpy(value),
                    projected(state, value),
                    k3q.scale_of(state, value),
                    state.quantizer.codebook_of(state.variables),
                )
            )
    return out


def weight_count(layer) -> int:
    """How many weights of a Keras 3 layer `quantize_model` puts on a codebook."""
    return specs.weight_count(layer, weight_specs(layer))


def copy_model(model):
    """A copy of a Keras 3 model (new layers, the same weights): a graph model
    rebuilt, another class re-created from its config and built.

    Raises:
        ValueError: Naming `in_place=True`, for a model that cannot be copied.
    """
    if is_graph_model(model):
        copy = clone(model, _fresh)
        copy.set_weights(model.get_weights())
        return copy
    copy = _from_config(model)
    if [tuple(w.shape) for w in copy.weights] != [tuple(w.shape) for w in model.weights]:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) re-created from its config holds "
            f"other weights ({len(copy.weights)} against {len(model.weights)}); it cannot be "
            "copied. Quantize it in place with `td.quantize_model(model, ..., in_place=True)`."
        )
    copy.set_weights(model.get_weights())
    return copy
