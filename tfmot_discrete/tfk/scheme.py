"""`DiscreteQuantizeRegistry` and `DiscreteQuantizeScheme` for `quantize_apply`."""

from __future__ import annotations

import dataclasses
import re

import tensorflow_model_optimization as tfmot

from tfmot_discrete.tfk import configs, int8
from tfmot_discrete.tfk import quantizers as quantizers_mod

_qk = tfmot.quantization.keras


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
            if not _is_int8(value) and not isinstance(
                value, configs.DiscreteQuantizeConfig | _qk.QuantizeConfig
            ):
                value = quantizers_mod.get(value)
            entries.append((rx, pattern, value))
        return QuantizerRules(tuple(entries), from_mapping=True)
    if isinstance(spec, _qk.QuantizeConfig):
        raise ValueError(
            "A QuantizeConfig applies to one layer: pass it in a mapping, e.g. "
            f"{{'my_layer': config}}. Received: {spec!r}"
        )
    q = spec if _is_int8(spec) else quantizers_mod.get(spec)
    if q is None:
        raise ValueError(
            "`quantizer` must be a CodebookQuantizer, a list of values, a preset name "
            "or a mapping {layer-name regex: quantizer}. Received: quantizer=None"
        )
    return QuantizerRules(((re.compile(".*"), ".*", q),), from_mapping=False)


def _is_int8(value) -> bool:
    return isinstance(value, str) and value == int8.INT8


class DiscreteQuantizeRegistry(_qk.QuantizeRegistry):
    """Answers every layer: codebook configs for known layer types, a config
    that quantizes nothing for the rest (BatchNormalization, Flatten, pooling,
    activations...), so `quantize_annotate_model` works on whole models.

    Args:
        quantizer: A `CodebookQuantizer` (or anything `td.quantizers.get`
            accepts), or a mapping `{layer-name regex: quantizer}`.
        activation_quantizer: Optional TF-MOT quantizer for layer outputs.
    """

    def __init__(self, quantizer, activation_quantizer=None):
        self._rules = resolve_quantizer_spec(quantizer)
        self._activation_quantizer = activation_quantizer
        #: A config (that quantizes nothing) for layers no rule names.
        #: `quantize_model` annotates every layer it quantizes itself and turns
        #: this off, so that unannotated neighbours are not wrapped.
        self.config_for_unlisted = True

    def supports(self, layer):
        return True

    def get_quantize_config(self, layer):
        found, value = self._rules.lookup(layer.name)
        if isinstance(value, _qk.QuantizeConfig):
            return value
        specs = configs.weight_specs(layer) or []
        chosen = self._rules.lookup_weights(layer.name, [s.name for s in specs])
        if any(v is not None for v in chosen.values()):
            cfg = configs.config_for_layer(layer, chosen, self._activation_quantizer)
            if cfg is not None:
                return cfg
        if not self.config_for_unlisted:
            return None
        return configs.DiscreteQuantizeConfig({}, self._activation_quantizer)


class _LayoutTransform(_qk.QuantizeLayoutTransform):
    """No BatchNorm folding (the converter folds it, keeping the codebook);
    an 8-bit input `QuantizeLayer` only when asked for."""

    def __init__(self, quantize_inputs=False):
        self.quantize_inputs = quantize_inputs

    def apply(self, model, layer_quantize_map):
        if not self.quantize_inputs:
            return model, layer_quantize_map
        return _qk.graph_transformations.model_transformer.ModelTransformer(
            model,
            [_qk.default_8bit.default_8bit_transforms.InputLayerQuantize()],
            set(layer_quantize_map.keys()),
            layer_quantize_map,
        ).transform()


class DiscreteQuantizeScheme(_qk.QuantizeScheme):
    """A TF-MOT `QuantizeScheme` for codebook weights.

    Args:
        quantizer: A `CodebookQuantizer`, or a mapping `{layer-name regex:
            quantizer}`. Defaults to `binary()`.
        activation_quantizer: Optional TF-MOT quantizer for layer outputs.
        quantize_inputs: Insert TF-MOT's 8-bit input `QuantizeLayer`.
            Defaults to `False`.

    Example:

    >>> import tensorflow_model_optimization as tfmot
    >>> import tfmot_discrete as td
    >>> model = td.keras.Sequential([td.keras.Input((4,)), td.keras.layers.Dense(3)])
    >>> annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    >>> with td.quantize_scope():
    ...     qat = tfmot.quantization.keras.quantize_apply(
    ...         annotated, scheme=td.DiscreteQuantizeScheme(td.binary()))
    >>> [type(l).__name__ for l in qat.layers]
    ['QuantizeWrapperV2']
    """

    def __init__(self, quantizer=None, activation_quantizer=None, quantize_inputs=False):
        if quantizer is None:
            quantizer = quantizers_mod.binary()
        self._registry = DiscreteQuantizeRegistry(quantizer, activation_quantizer)
        self._quantize_inputs = bool(quantize_inputs)

    def get_layout_transformer(self):
        return _LayoutTransform(self._quantize_inputs)

    def get_quantize_registry(self):
        return self._registry
