"""`quantize_model` and `strip_quantization` for Keras 3 models."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmot_discrete.core import checks, rules, specs
from tfmot_discrete.core.quantizers import CodebookQuantizer, indices_of, is_int8
from tfmot_discrete.keras3 import nested
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.keras3._k3 import is_graph_model, keras, ops
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.wrapper import SUPPORTED, QuantizeWrapper, weight_specs

#: The Keras 3 classes of `core.specs.FLOAT_LAYERS`: float by design.
_FLOAT_LAYERS = tuple(getattr(keras.layers, name) for name in specs.FLOAT_LAYERS)


def check_model(model, argname="model"):
    """Raises unless `model` is a built Keras 3 Sequential or Functional model."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argname}` must be a Keras 3 Sequential or Functional model. Received: "
            f"{argname} of type {type(model).__module__}.{type(model).__name__}"
        )
    if not is_graph_model(model):
        raise ValueError(
            f"`{argname}` is a subclassed Keras 3 model ({type(model).__name__}); only "
            "Sequential and Functional models can be quantized, because the model is "
            "rebuilt from its config with wrapped layers. Rewrite it with the Functional API."
        )
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`{argname}` ({model.name!r}) is not built: give it a `keras.Input` before "
            "quantizing it."
        )
    return model


def _check_value(layer, value) -> None:
    if not (isinstance(value, CodebookQuantizer) or is_int8(value)):
        raise ValueError(
            f"Layer {layer.name!r}: on Keras 3 a mapping value is a quantizer, 'int8' or "
            f"None; TF-MOT QuantizeConfigs are tf_keras only. Received: {value!r}"
        )


def _is_kernel_like(variable) -> bool:
    """As `annotate.is_kernel_like`: trainable, rank 2 or more, not a bias."""
    return variable.trainable and len(variable.shape) >= 2 and not variable.name.endswith("bias")


def _spec_names(layer) -> dict[int, str]:
    """`{id(variable): weight name}` of the weights `weight_specs` names."""
    out = {}
    for spec in weight_specs(layer) or ():
        owner, attr = specs.resolve(layer, spec.path)
        out[id(getattr(owner, attr))] = spec.name
    return out


def _plan(model, spec) -> tuple[dict, list]:
    """`{layer name: quantizer | "int8" | {weight name: quantizer | "int8"}}`
    of the layers to wrap, and the `rules.FloatWeights` of the layers whose
    kernel-like weights stay float."""
    plan, float_weights = {}, []
    rules.check_mapping_keys(model.layers, spec, weight_specs)

    def left_float(layer, names, reason):
        if names:
            float_weights.append(
                rules.FloatWeights(
                    layer.name, type(layer).__name__, tuple(names), reason, tuple(SUPPORTED)
                )
            )

    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, *_FLOAT_LAYERS)):
            continue
        found, value = spec.lookup(layer.name)
        if isinstance(layer, DiscreteMultiplier):
            if spec.from_mapping and found and value is not None and value != layer.quantizer:
                raise ValueError(
                    f"Layer {layer.name!r} is a DiscreteMultiplier: it carries its own "
                    f"codebook ({layer.quantizer!r}); set it there instead of in the mapping."
                )
            continue
        specs = weight_specs(layer)
        names = _spec_names(layer)
        kernels = [names.get(id(v), v.name) for v in layer.weights if _is_kernel_like(v)]
        if specs is None:
            if spec.from_mapping and found and value is not None and layer.trainable_weights:
                raise ValueError(
                    f"Layer {layer.name!r} of class {type(layer).__name__} cannot be quantized "
                    f"to a codebook on Keras 3 (supported: {SUPPORTED}, DiscreteMultiplier)."
                )
            left_float(layer, kernels, rules.UNSUPPORTED)
            continue
        chosen = spec.lookup_weights(layer.name, [s.name for s in specs])
        kept = {}
        for name, v in chosen.items():
            if v is not None:
                _check_value(layer, v)
                kept[name] = v
        values = list(kept.values())
        if len(kept) == len(specs) and all(v == values[0] for v in values):
            plan[layer.name] = values[0]
        elif kept:
            plan[layer.name] = kept
        rest = [n for n in kernels if n not in kept]
        left_float(layer, [n for n in rest if n in chosen], rules.MAPPED_TO_NONE)
        left_float(layer, [n for n in rest if n not in chosen], rules.UNNAMED)
    return plan, float_weights


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


def clone(model, clone_function):
    """`keras.models.clone_model(model, clone_function=...)`, keeping the names
    of a Functional model's inputs (a plain clone renames them)."""
    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, clone_function=clone_function)
    refs = model.get_config()["input_layers"]
    names = [r[0] for r in refs] if isinstance(refs[0], list | tuple) else [refs[0]]
    inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, names)
    ]
    return keras.models.clone_model(
        model, input_tensors=inputs if len(inputs) > 1 else inputs[0], clone_function=clone_function
    )


def quantize_model(model, quantizer, activations=None, strict=False):
    """`td.quantize_model` for a Keras 3 model: a Keras 3 model back.

    Every supported layer (`wrapper.weight_specs`) is wrapped in a
    `QuantizeWrapper` named `"quant_" + name`; the other layers are copied.
    The model trains with `keras.ops` on the TensorFlow, JAX and PyTorch
    backends. A model used as a layer (a backbone) is flattened first
    (`keras3.nested`): its layers become the returned model's. Arguments as in `td.quantize_model`; `activations="int8"` is
    tf_keras only (use `td.to_tf_keras` first). A layer whose kernel-like
    weights stay float gets a `QuantizationWarning`, or with `strict=True` a
    `ValueError`.
    """
    if activations is not None:
        raise ValueError(
            "`activations='int8'` is supported on tf_keras models only: convert the model "
            f"with `td.to_tf_keras(model)` first. Received: activations={activations!r}"
        )
    check_model(model)
    spec = rules.resolve_quantizer_spec(quantizer)
    model = nested.flatten(model)
    if not isinstance(strict, bool):
        raise ValueError(f"`strict` must be a bool. Received: strict={strict!r}")
    plan, float_weights = _plan(model, spec)
    rules.report(float_weights, strict)

    def _clone(layer):
        if layer.name in plan:
            return QuantizeWrapper(_fresh_built(layer), plan[layer.name])
        return _fresh(layer)

    qat = clone(model, _clone)
    for layer in qat.layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        if isinstance(inner, keras.layers.InputLayer):
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
    return qat


def _state_vars(layer):
    state = getattr(layer, "state", None)
    return sorted(state.variables.items()) if state is not None else []


def is_quantized(model) -> bool:
    """True when a Keras 3 model holds wrappers or DiscreteMultipliers."""
    return any(isinstance(layer, QuantizeWrapper | DiscreteMultiplier) for layer in model.layers)


def items(model) -> list[tuple[str, str, object, k3q.WeightState]]:
    """`(layer name, weight name, latent variable, WeightState)` per quantized
    weight, layer by layer (wrappers by their inner layer's name)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapper) and layer.built:
            for var, state in layer.states:
                out.append((layer.layer.name, state.name, var, state))
        elif isinstance(layer, DiscreteMultiplier) and layer.built:
            out.append((layer.name, "kernel", layer.kernel, layer.state))
    return out


def projected(state, latent) -> np.ndarray:
    """A weight's quantized value, as inference computes it (NumPy)."""
    return ops.convert_to_numpy(k3q.quantize(state, ops.convert_to_tensor(latent), False))


def strip_quantization(model):
    """`td.strip_quantization` for a Keras 3 model: the plain Keras 3 model.

    Wrappers are replaced by their inner layers holding the projected weights;
    a `DiscreteMultiplier` keeps its class, with its vector projected and its
    codebook folded with the scale.

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
            new_weights[layer.name] = layer.get_weights()
        return _fresh(layer)

    plain = clone(model, _strip)
    for layer in plain.layers:
        values = new_weights.get(layer.name)
        if values and layer.weights:
            if isinstance(layer, DiscreteMultiplier):
                layer.kernel.assign(values[0])
            else:
                layer.set_weights(values)
    return plain


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
    """

    label: str
    quantizer: CodebookQuantizer
    latent: np.ndarray
    projected: np.ndarray
    scale: np.ndarray

    @property
    def codes(self) -> np.ndarray:
        """The index of the codebook value each weight projects to (read
        through `core.quantizers.indices_of`, as on the tf_keras path)."""
        return indices_of(self.quantizer, self.projected, self.scale)


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
                )
            )
    return out


def weight_count(layer) -> int:
    """How many weights of a Keras 3 layer `quantize_model` puts on a codebook."""
    return specs.weight_count(layer, weight_specs(layer))


def copy_model(model):
    """A copy of a Keras 3 model (new layers, the same weights)."""
    copy = clone(model, _fresh)
    copy.set_weights(model.get_weights())
    return copy
