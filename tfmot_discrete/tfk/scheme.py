"""`DiscreteQuantizeRegistry` and `DiscreteQuantizeScheme` for `quantize_apply`."""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfmot_discrete.core.rules import QuantizerRules as QuantizerRules  # (moved to the core)
from tfmot_discrete.core.rules import resolve_quantizer_spec
from tfmot_discrete.tfk import configs
from tfmot_discrete.tfk import quantizers as quantizers_mod

_qk = tfmot.quantization.keras


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
