"""`QuantizeWrapper`: a Keras 3 layer computing with its inner layer's weights
projected to a codebook (or rounded to 8 bits).

Which weights of which layer, their names and channel axes come from
`tfmot_discrete.core.specs.weight_specs` (the table both paths read), matched on
Keras 3's classes: a recurrent layer's weights are its cell's, a
`Bidirectional`'s its two layers' cells', a `MultiHeadAttention`'s its
projection sub-layers'.
"""

from __future__ import annotations

import inspect

from tfmot_discrete.core import specs
from tfmot_discrete.core.quantizers import CodebookQuantizer, int8_quantizer_for, is_int8
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.keras3 import tree
from tfmot_discrete.keras3._k3 import keras, register

_L = keras.layers


def _keras3_names(class_name: str, weights: dict) -> dict:
    """A tf_keras layer's `{weight: axes}` under the Keras 3 weight names
    (Keras 3 calls DepthwiseConv's weight `kernel`)."""
    if class_name.startswith("DepthwiseConv"):
        return {"kernel": weights["depthwise_kernel"]}
    return dict(weights)


#: Keras 3 layer class -> {weight name: output-channel axes of that weight}:
#: the plain layers of `tfmot_discrete.core.specs.LAYER_WEIGHTS`, by class name,
#: and DepthwiseConv1D, which only Keras 3 has among them.
LAYER_WEIGHTS = {
    getattr(_L, name): _keras3_names(name, weights) for name, weights in specs.LAYER_WEIGHTS.items()
}
LAYER_WEIGHTS[_L.DepthwiseConv1D] = {"kernel": [-2, -1]}
_PLAIN = {cls.__name__: weights for cls, weights in LAYER_WEIGHTS.items()}


#: The Keras 3 classes `weight_specs` knows, for messages (and those given
#: to `register_weights`).
SUPPORTED = sorted({c.__name__ for c in LAYER_WEIGHTS} | set(specs.SUPPORTED))


#: Custom layer class -> {attribute: channel axes}, from `register_weights`.
REGISTERED: dict[type, dict[str, list[int]]] = {}


def register_weights(layer_class, weights):
    """Names the weights of a custom Keras 3 layer class that go on a codebook.

    A layer of your own that makes its kernels with `add_weight` (not through
    sub-layers such as `Dense`) is not known to `quantize_model`: its kernels
    stay float with a notice. Registered, its layers are wrapped in a
    `QuantizeWrapper`, which puts each named weight's projection in the
    attribute during the layer's `call` (so `call` must read the weight as
    `self.<attribute>`). Register before `quantize_model` and before loading
    a saved QAT model.

    Args:
        layer_class: A subclass of `keras.layers.Layer`.
        weights: `{attribute name: output-channel axes}`, e.g. `{"w": [-1]}`
            (one scale per last-axis channel) or `{"w": []}` (one scale).

    Returns:
        `layer_class`, so that it can decorate the class.

    Raises:
        ValueError: For a class that is not a Keras 3 layer, or weights that
            are not `{str: list of ints}`.

    Example:

    >>> class Scale(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.w = self.add_weight(shape=(shape[-1], 4))
    ...     def call(self, x):
    ...         return x @ self.w
    >>> _ = register_weights(Scale, {"w": [-1]})
    >>> [s.name for s in weight_specs(Scale())]
    ['w']
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise ValueError(
            f"`layer_class` must be a Keras 3 layer class. Received: layer_class={layer_class!r}"
        )
    ok = (
        isinstance(weights, dict)
        and weights
        and all(
            isinstance(k, str)
            and isinstance(v, list | tuple)
            and all(isinstance(a, int) for a in v)
            for k, v in weights.items()
        )
    )
    if not ok:
        raise ValueError(
            "`weights` must be a non-empty {attribute name: list of channel axes} dict, e.g. "
            f"{{'w': [-1]}}. Received: weights={weights!r}"
        )
    REGISTERED[layer_class] = {k: list(v) for k, v in weights.items()}
    return layer_class


def weight_specs(layer) -> list[specs.WeightSpec] | None:
    """`core.specs.weight_specs` on Keras 3 classes: the weights of `layer` that
    go on a codebook (name, attribute path, channel axes), or None for a layer
    we do not know (subclasses are not matched: their `call` may read weights
    differently). A class given to `register_weights` has the weights named there."""
    registered = REGISTERED.get(type(layer)) or _keras_hub_weights(layer)
    if registered is not None:
        return [specs.WeightSpec(a, a, tuple(axes)) for a, axes in registered.items()]
    return specs.weight_specs(layer, _L, _PLAIN)


def _keras_hub_weights(layer) -> dict | None:
    """The embedding layers of KerasHub models (matched by module and class
    name, so that KerasHub is not imported): `ReversibleEmbedding` (Keras's
    or KerasHub's: an `Embedding` whose table, tied, also projects to the
    vocabulary)."""
    cls = type(layer)
    if not cls.__module__.startswith(("keras_hub.", "keras.src.layers.core.reversible_embedding")):
        return None
    if cls.__name__ == "ReversibleEmbedding":
        weights = {"embeddings": [0]}
        if not getattr(layer, "tie_weights", True):
            weights["reverse_embeddings"] = [-1]
        return weights
    # (KerasHub's `PositionEmbedding` is float by design: `reach.is_float_by_design`.)
    return None


def quantizable_weights(layer) -> dict | None:
    """`{weight name: channel axes}` for a Keras 3 layer we know, else None."""
    specs = weight_specs(layer)
    return None if specs is None else {s.name: list(s.axes) for s in specs}


def _is_per_weight(value) -> bool:
    """A `{weight name: quantizer}` dict (not a quantizer's config)."""
    return isinstance(value, dict) and "values" not in value and "class_name" not in value


def quantizer_config(quantizer):
    """A wrapper's `quantizer` argument as JSON-able config (`quantizer_from` reads it)."""
    if isinstance(quantizer, dict):
        return {name: quantizer_config(q) for name, q in quantizer.items()}
    return quantizer if isinstance(quantizer, str) else quantizer.get_config()


def quantizer_from(value):
    """A wrapper's `quantizer` argument from itself or its config."""
    if is_int8(value):
        return value
    if isinstance(value, CodebookQuantizer):
        return value
    if _is_per_weight(value):
        return {name: quantizer_from(q) for name, q in value.items()}
    return CodebookQuantizer.from_config(value)


def per_weight_quantizer(quantizer, axes):
    """The quantizer of one weight: the codebook one with the weight's channel
    axes, or 8-bit per channel when the last axis is a channel axis."""
    if isinstance(quantizer, str):
        return int8_quantizer_for(list(axes))
    return quantizer.with_channel_axes(list(axes))


def _call_like(inner_call, run):
    """`run`, under the signature of `inner_call` with a keyword-only
    `training` added when it has none."""
    signature = inspect.signature(inner_call)
    params = list(signature.parameters.values())
    if "training" not in signature.parameters:
        kinds = [p.kind for p in params]
        at = (
            kinds.index(inspect.Parameter.VAR_KEYWORD)
            if inspect.Parameter.VAR_KEYWORD in kinds
            else len(params)
        )
        params.insert(
            at, inspect.Parameter("training", inspect.Parameter.KEYWORD_ONLY, default=None)
        )

    def call(*args, **kwargs):
        return run(*args, **kwargs)

    call.__signature__ = signature.replace(parameters=params)
    return call


@register(package="tfmot_discrete")
class QuantizeWrapper(keras.layers.Layer):
    """Runs `layer` with its kernel-like weights quantized on every call.

    The inner layer keeps its float latent weights; before its `call` the
    wrapper puts the quantized tensors where that `call` reads them (the
    attribute holding each variable, on the object that holds it: the layer,
    its cell, a `Bidirectional`'s direction's cell, an attention projection)
    and puts the variables back after. Gradients reach the latent weights
    through the quantizer's straight-through estimator.

    Args:
        layer: A Keras 3 layer of a class `weight_specs` knows (built, or
            buildable from the wrapper's input shape).
        quantizer: A `CodebookQuantizer`, or `"int8"` for 8-bit weights
            (symmetric, narrow range, per output channel), for each weight of
            the layer; or `{weight name: quantizer | "int8"}` (a weight left
            out stays float), the names of `weight_specs`
            (`"recurrent_kernel"`, `"forward/kernel"`, `"query/kernel"`).
        **kwargs: Base layer arguments. The name defaults to
            `"quant_" + layer.name`.
    """

    def __init__(self, layer, quantizer, **kwargs):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        specs = weight_specs(layer)
        if specs is None:
            raise ValueError(
                f"QuantizeWrapper cannot quantize layer {layer.name!r} of class "
                f"{type(layer).__name__}; supported: {SUPPORTED}. Received: layer={layer!r}"
            )
        kwargs.setdefault("name", f"quant_{layer.name}")
        params = inspect.signature(layer.call).parameters
        # The wrapper's `call` takes the inner layer's arguments, as the inner
        # layer names them (a parent calls `self.attention(query=x, value=x)`),
        # plus `training`. Keras reads the signature in `__init__`: it passes
        # (and records) `mask` only when `call` has one, so that a clone can
        # put the inner layer back in the wrapper's place (`strip_quantization`).
        object.__setattr__(self, "call", _call_like(layer.call, self._run))
        super().__init__(**kwargs)
        self.layer = layer
        self._takes_training = "training" in params
        self.supports_masking = layer.supports_masking  # (an Embedding's mask_zero)
        self.quantizer = quantizer_from(quantizer)
        if isinstance(self.quantizer, dict):
            unknown = set(self.quantizer) - {s.name for s in specs}
            if unknown:
                raise ValueError(
                    f"Layer {layer.name!r} has no weight(s) {sorted(unknown)} to quantize; its "
                    f"weights are {[s.name for s in specs]}. Received: quantizer={quantizer!r}"
                )
            specs = [s for s in specs if s.name in self.quantizer]
        self._specs = specs
        # (owner, attribute, variable, WeightState), not tracked by Keras (the
        # variables are the inner layer's, the state's the wrapper's own).
        object.__setattr__(self, "_states", [])
        # Its own seed (drawn from Python's `random`, which
        # `keras.utils.set_random_seed` seeds): equal-shaped layers draw different
        # rounding noise.
        self.seed_generator = keras.random.SeedGenerator()

    def __getattr__(self, name):
        # A parent may read its sub-layer's public attributes (KerasHub's
        # `TokenAndPositionEmbedding.get_config` reads
        # `self.token_embedding.tie_weights`): the wrapper in the sub-layer's
        # place answers with the inner layer's. Called only for names the
        # wrapper lacks; the base class's lookup goes first (on PyTorch a
        # layer's sub-layers live in `torch.nn.Module._modules`).
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        if name.startswith("_") or name == "layer":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.layer, name)

    def _quantizer_of(self, name):
        return self.quantizer[name] if isinstance(self.quantizer, dict) else self.quantizer

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        states = []
        for spec in self._specs:
            owner, attr = specs.resolve(self.layer, spec.path)
            var = getattr(owner, attr)
            # The attribute holding the variable: `call` may read it through a
            # property (Keras 3's `Dense.kernel` returns `self._kernel`).
            attr = next(k for k, v in vars(owner).items() if v is var)
            q = per_weight_quantizer(self._quantizer_of(spec.name), spec.axes)
            state = k3q.make_state(self, var, q)
            state.name = spec.name  # "forward/kernel": the name reports and mappings use
            states.append((owner, attr, var, state))
        object.__setattr__(self, "_states", states)
        self.built = True

    @property
    def states(self) -> list[tuple[object, k3q.WeightState]]:
        """`(latent variable, WeightState)` of each quantized weight."""
        return [(var, state) for _, _, var, state in self._states]

    def call(self, *args, **kwargs):
        """The inner layer's `call` on the quantized weights (each wrapper
        replaces this method by one of the inner `call`'s signature)."""
        return self._run(*args, **kwargs)

    def _run(self, *args, training=None, **kwargs):
        """The inner layer's `call` on the quantized weights."""
        training = bool(training)
        swapped = [
            (owner, attr, k3q.quantize(state, var.value, training, self.seed_generator))
            for owner, attr, var, state in self._states
        ]
        for owner, attr, tensor in swapped:
            object.__setattr__(owner, attr, tensor)
        if self._takes_training:
            kwargs["training"] = training
        try:
            return self.layer.call(*args, **kwargs)
        finally:
            for owner, attr, var, _ in self._states:
                object.__setattr__(owner, attr, var)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "quantizer": quantizer_config(self.quantizer),
            }
        )
        return config


def wrap_place(place, value, initialize):
    """Puts a `QuantizeWrapper` of `value` in place of `place.layer` (built now,
    so that no variable is made inside a traced step); with `initialize`, its
    learned scales and 8-bit ranges are set from the weights."""
    wrapper = QuantizeWrapper(place.layer, value)
    wrapper.build(None)
    if initialize:
        for var, state in wrapper.states:
            k3q.initialize(state, var.value)
    tree.replace(place.parent, place.layer, wrapper)
    return wrapper
