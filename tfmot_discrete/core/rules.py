"""The rules of the `quantizer` argument, shared by both paths: a quantizer or
a mapping `{regex: quantizer | "int8" | None}` as regex rules on layer and
weight names, the check that every key names something, and what is said
about kernel-like weights that stay float.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

from tfmot_discrete.core import quantizers, specs
from tfmot_discrete.core.quantizers import is_int8


class QuantizationWarning(UserWarning):
    """What `quantize_model` warns about: weights that will not train, that
    start on only some of their codebook's values, or kernel-like weights that
    stay float (one warning per layer, saying why)."""


def is_quantize_config(value) -> bool:
    """A TF-MOT `QuantizeConfig` (told by its class, without importing TF-MOT:
    on a Keras 3 path none can exist unless TF-MOT is loaded)."""
    return any(
        klass.__name__ == "QuantizeConfig"
        and klass.__module__.startswith("tensorflow_model_optimization")
        for klass in type(value).__mro__
    )


@dataclasses.dataclass(frozen=True)
class QuantizerRules:
    """The quantizer argument in its one form: regex rules on layer names.

    A single quantizer is the rule `.*`. `from_mapping` tells that the user
    wrote the rules: then every key must match a layer or one of its weights,
    and a layer it matches must be one we can quantize. A rule names a whole
    layer (`re.fullmatch` on its name) or one weight of it (`re.fullmatch` on
    `"<layer name>/<weight name>"`, e.g. `"lstm/recurrent_kernel"`,
    `"mha/query/kernel"`).
    """

    rules: tuple  # of (compiled regex, pattern, quantizer | QuantizeConfig | None)
    from_mapping: bool

    def lookup(self, layer_name):
        """What the rules say for `layer_name`: (found, quantizer-or-config-or-None)."""
        for rx, _, value in self.rules:
            if rx.fullmatch(layer_name):
                return True, value
        return False, None

    def matches(self, rx, layer_name, weight_names=()) -> bool:
        """Whether the rule `rx` names the layer or one of `weight_names`."""
        return rx.fullmatch(layer_name) is not None or any(
            rx.fullmatch(f"{layer_name}/{w}") for w in weight_names
        )

    def lookup_weights(self, layer_name, weight_names) -> dict:
        """`{weight name: quantizer | "int8" | None}` for one layer's weights,
        each from the first rule that names the layer or that weight; a
        weight no rule names is left out."""
        out = {}
        for w in weight_names:
            for rx, _, value in self.rules:
                if self.matches(rx, layer_name, (w,)):
                    out[w] = value
                    break
        return out


def resolve_quantizer_spec(spec) -> QuantizerRules:
    """Validates the `quantizer` argument (a quantizer or a mapping) into rules."""
    if isinstance(spec, dict) and "values" not in spec and "class_name" not in spec:
        entries = []
        for pattern, value in spec.items():
            if not isinstance(pattern, str):
                raise ValueError(
                    "Keys of a quantizer mapping must be regular expressions on layer "
                    f"names (str). Received: key {pattern!r}"
                )
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"Key {pattern!r} of the quantizer mapping is not a valid regular "
                    f"expression ({e})."
                ) from e
            if not is_int8(value) and not is_quantize_config(value):
                value = quantizers.get(value)
            entries.append((rx, pattern, value))
        return QuantizerRules(tuple(entries), from_mapping=True)
    if is_quantize_config(spec):
        raise ValueError(
            "A QuantizeConfig applies to one layer: pass it in a mapping, e.g. "
            f"{{'my_layer': config}}. Received: {spec!r}"
        )
    q = spec if is_int8(spec) else quantizers.get(spec)
    if q is None:
        raise ValueError(
            "`quantizer` must be a CodebookQuantizer, a list of values, a preset name "
            "or a mapping {layer-name regex: quantizer}. Received: quantizer=None"
        )
    return QuantizerRules(((re.compile(".*"), ".*", q),), from_mapping=False)


def check_mapping_keys(layers, spec, weight_specs) -> None:
    """Every key of a user's mapping must name a layer or one of its weights
    (`weight_specs(layer)` gives a layer's weights: each path passes its own).

    Raises:
        ValueError: For a key that matches nothing, listing the layer names.
    """
    if not spec.from_mapping:
        return
    names = [layer.name for layer in layers]
    weights = {layer.name: [s.name for s in weight_specs(layer) or ()] for layer in layers}
    for rx, pattern, _ in spec.rules:
        if not any(spec.matches(rx, n, weights[n]) for n in names):
            raise ValueError(
                f"Quantizer mapping key {pattern!r} matches no layer (and no '<layer>/<weight>' "
                f"name) of the model (matched with re.fullmatch). Layer names: {names}"
            )


#: Why a weight stays float (`FloatWeights.reason`).
UNSUPPORTED = "unsupported"
UNNAMED = "unnamed"
MAPPED_TO_NONE = "mapped to None"


@dataclasses.dataclass(frozen=True)
class FloatWeights:
    """Kernel-like weights of one layer that `quantize_model` leaves float."""

    layer: str
    layer_class: str
    weights: tuple[str, ...]
    reason: str  # UNSUPPORTED, UNNAMED or MAPPED_TO_NONE
    #: The layer classes the path that reports supports (tf_keras's by default).
    supported: tuple[str, ...] = tuple(specs.SUPPORTED)
    #: The path the layer is on: "tf_keras" or "keras3" (what to do differs).
    path: str = "tf_keras"

    def message(self) -> str:
        what = (
            f"Layer {self.layer!r} ({self.layer_class}): weight(s) {list(self.weights)} stay float"
        )
        if self.reason == MAPPED_TO_NONE:
            return f"{what}: the quantizer mapping maps them to None."
        if self.reason == UNNAMED:
            return f"{what}: no key of the quantizer mapping names the layer or these weights."
        head = (
            f"{what}: no codebook config for class {self.layer_class} (supported: "
            f"{', '.join(self.supported)}, DiscreteMultiplier; subclasses and custom RNN "
            "cells are not matched)."
        )
        if self.path == "keras3":
            named = ", ".join(f"{n!r}: [-1]" for n in self.weights) or "'<attribute>': [-1]"
            return (
                f"{head} Name the weights its `call` reads with "
                f"`td.keras3.register_weights({self.layer_class}, {{{named}}})` "
                "(attribute -> output-channel axes; -1 when the last axis is the output "
                "channel) before `quantize_model`."
            )
        return (
            f"{head} Map its name to a `td.DiscreteQuantizeConfig` naming the "
            "weights its `call` reads, e.g. {'"
            f"{self.layer}': td.DiscreteQuantizeConfig({{'kernel': q}})}} or "
            "{'cell.kernel': q} for a weight held by a cell or sub-layer."
        )


def report(float_weights, strict: bool) -> None:
    """Warns once per layer with float kernel-like weights
    (`QuantizationWarning`); with `strict`, raises instead.

    Raises:
        ValueError: With `strict=True`, listing every such layer.
    """
    if strict and float_weights:
        lines = "\n".join(f"- {f.message()}" for f in float_weights)
        raise ValueError(
            f"strict=True: {len(float_weights)} layer(s) would keep kernel-like weights "
            f"float:\n{lines}\nQuantize them (a codebook or 'int8' in the mapping), or pass "
            "strict=False to accept float weights."
        )
    for f in float_weights:
        # stacklevel 4: the line that called quantize_model.
        warnings.warn(f.message(), QuantizationWarning, stacklevel=4)


# Where a full-integer file quantizes a layer's output, told by class names
# (the same in tf_keras and Keras 3), so that both paths put their 8-bit
# activation fake quantization (`activations="int8"`) at the same places.

#: Layers the TFLite converter fuses into the operation before them: that
#: operation's own output is not quantized then, only the fused result.
_FUSED_AFTER = ("BatchNormalization", "ReLU")
_FUSABLE = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "BatchNormalization",
)
#: Layers whose output stays float in training: an input (quantized by its
#: own quantizer), a `DiscreteMultiplier` (not wrapped: its consumer's output
#: is quantized), and `MultiHeadAttention` (TF-MOT builds an output quantizer
#: from one input shape, which attention's query and value do not give).
_OUTPUT_STAYS_FLOAT = ("InputLayer", "DiscreteMultiplier", "MultiHeadAttention")
#: Layers that fake-quantize their own output (and the tensors inside them).
_QUANTIZES_ITSELF = ("Int8LSTM", "Int8GRU")
#: Layers whose file operation keeps its input's 8-bit scale and zero point
#: (the ones TF-MOT's default 8-bit registry gives no output quantizer, and max
#: pooling in every rank).
_KEEPS_INPUT_SCALE = (
    "Flatten",
    "Reshape",
    "Permute",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "ActivityRegularization",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
)


def _is(layer, names) -> bool:
    return any(klass.__name__ in names for klass in type(layer).__mro__)


def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def fused_into_next(layer, consumers) -> bool:
    """True when the converter folds `layer`'s only consumer into it
    (Conv -> BatchNorm, Dense -> ReLU, ...). `consumers`: the layers that
    take `layer`'s output in the model's graph."""
    if not _is(layer, _FUSABLE) or _activation_name(layer) != "linear":
        return False
    if len(consumers) != 1:
        return False
    nxt = consumers[0]
    if _is(nxt, ("Activation",)):
        return _activation_name(nxt) in ("relu", "relu6")
    return _is(nxt, _FUSED_AFTER)


def output_quantized(layer, consumers) -> bool:
    """True where `activations="int8"` fake-quantizes `layer`'s output: where
    the full-integer file quantizes it, and training can (a layer that keeps
    its input's scale aside: see `outputs_to_quantize`)."""
    return not _is(layer, _OUTPUT_STAYS_FLOAT + _QUANTIZES_ITSELF) and not fused_into_next(
        layer, consumers
    )


def outputs_to_quantize(layers, producers, consumers) -> set[int]:
    """The ids of `layers` (a model's, in graph order) whose output
    `activations="int8"` fake-quantizes.

    `output_quantized` decides, except for a layer that moves or drops
    values without computing new ones (`Flatten`, `Reshape`, `Dropout`, max
    pooling, ...) whose inputs are all 8-bit already: its operation in the
    file keeps its input's scale, so a range of its own would make training
    round twice where the file rounds once (TF-MOT's default 8-bit scheme
    leaves these outputs alone too).

    Args:
        layers: The model's layers, each after the layers it takes.
        producers: `{id(layer): the layers whose outputs it takes}`; a layer
            without an entry takes a model input (8-bit: its own quantizer).
        consumers: `{id(layer): the layers taking its output}`.
    """
    eight_bit = set()

    def is_eight_bit(layer):
        return _is(layer, ("InputLayer",)) or id(layer) in eight_bit

    out = set()
    for layer in layers:
        if _is(layer, _QUANTIZES_ITSELF):
            eight_bit.add(id(layer))
        elif _is(layer, _KEEPS_INPUT_SCALE) and all(
            is_eight_bit(p) for p in producers.get(id(layer), [])
        ):
            eight_bit.add(id(layer))
        elif output_quantized(layer, consumers.get(id(layer), [])):
            out.add(id(layer))
            eight_bit.add(id(layer))
    return out
