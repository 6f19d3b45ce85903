"""`to_tf_keras`: a Keras 3 model rebuilt in tf_keras, QAT state included.

TF-MOT, the TFLite export and the reports work on tf_keras models. A Keras 3
QAT model (from `td.quantize_model`) travels there as its tf_keras twin: the
same layers and latent weights, quantized by `td.quantize_model` with the same
quantizers, learned scales and 8-bit ranges copied, so that the twin projects
the weights to what the Keras 3 model computes with (a parity test holds the
two to the same bits).
"""

from __future__ import annotations

import re
import warnings

from tfmot_discrete import tfk
from tfmot_discrete.core.rules import QuantizationWarning
from tfmot_discrete.keras3 import keras, nested
from tfmot_discrete.keras3 import quantize as k3_quantize
from tfmot_discrete.keras3.activations import PREFIX, ActivationQuantizer
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.wrapper import QuantizeWrapper
from tfmot_discrete.tfk import configs, recurrent, weights
from tfmot_discrete.tfk import quantize as tfk_quantize
from tfmot_discrete.tfk.compat import QuantizeLayer
from tfmot_discrete.tfk.layers import DiscreteMultiplier as TfKerasMultiplier


def _latent(model):
    """The Keras 3 model with wrappers replaced by their inner layers (latent
    weights) and multipliers by plain placeholders of the same shape, plus
    `{inner name: quantizer}` and the multipliers by name."""
    plan, multipliers, values = {}, {}, {}

    def _unwrap(layer):
        if isinstance(layer, QuantizeWrapper):
            plan[layer.layer.name] = layer.quantizer
            values[layer.layer.name] = layer.layer.get_weights()
            return layer.layer.__class__.from_config(layer.layer.get_config())
        if isinstance(layer, DiscreteMultiplier):
            multipliers[layer.name] = layer
            # A layer tf_keras rebuilds: the multiplier is put back after.
            return keras.layers.Identity(name=layer.name)
        values[layer.name] = layer.get_weights()
        return layer.__class__.from_config(layer.get_config())

    plain = k3_quantize.clone(model, _unwrap, k3_quantize.WITHOUT_ACTIVATIONS)
    for layer in plain.layers:
        if values.get(layer.name):
            layer.set_weights(values[layer.name])
    return plain, plan, multipliers


def to_tf_keras(model):
    """Rebuilds a Keras 3 model in tf_keras, with the same names and weights.

    A plain model comes back plain; a model from `td.quantize_model` comes
    back as the tf_keras QAT model of the same quantizers (its `QuantizeWrapperV2`s
    and `td.DiscreteMultiplier`s holding the same latent weights, learned
    scales and 8-bit ranges), ready for `tflite_export.export`,
    `td.summary` or more training with tf_keras and TF-MOT. Runs on every
    Keras 3 backend (weights travel as NumPy arrays). A model used as a
    layer comes back flattened into the outer model (`keras3.nested`).

    Args:
        model: A built Keras 3 Sequential or Functional model.

    Returns:
        A tf_keras model.

    Raises:
        ValueError: Naming the first layer that tf_keras cannot rebuild.
    """
    k3_quantize.check_graph_model(model)
    model = nested.flatten(model)
    ranges = {layer.name: layer for layer in model.layers if isinstance(layer, ActivationQuantizer)}
    plain3, plan, multipliers = _latent(model)
    plain = tfk.from_keras3(plain3)
    if multipliers:
        plain = _with_multipliers(plain, multipliers)
    if not plan and not ranges:
        return plain
    mapping = {}
    for layer in plain.layers:
        if layer.name in plan:
            mapping[re.escape(layer.name)] = configs.config_for_layer(layer, plan[layer.name])
    with warnings.catch_warnings():
        # The Keras 3 model's `quantize_model` told of its float weights already.
        warnings.simplefilter("ignore", QuantizationWarning)
        # Its LSTM and GRU stay plain: the Keras 3 model's compute with float states.
        with recurrent.float_states():
            qat = tfk_quantize.quantize_model(
                plain, mapping or None, activations="int8" if ranges else None
            )
    _copy_state(model, qat)
    if ranges:
        _copy_ranges(model, ranges, qat)
    return qat


def _with_multipliers(plain, multipliers):
    """`plain` with each Identity placeholder replaced by the tf_keras
    `DiscreteMultiplier` of the same codebook and values."""

    def _swap(layer):
        src = multipliers.get(layer.name)
        if src is None:
            return layer.__class__.from_config(layer.get_config())
        return TfKerasMultiplier(src.quantizer, kernel_initializer="zeros", name=layer.name)

    with tfk_quantize.quantize_scope():
        out = tfk.keras.models.clone_model(plain, clone_function=_swap)
    for layer in out.layers:
        src = multipliers.get(layer.name)
        if src is not None:
            layer.kernel.assign(keras.ops.convert_to_numpy(src.kernel.value))
            _assign_vars(src.state.variables, layer.quantizer_vars)
        elif layer.weights:
            layer.set_weights(plain.get_layer(layer.name).get_weights())
    return out


def _twin_ranges(qat) -> dict:
    """`{name of the Keras 3 ActivationQuantizer it stands for: TF-MOT's
    min/max variables}` of every activation quantizer of a tf_keras QAT model:
    an input's `QuantizeLayer` under `"act_" + the input's name`, a wrapper's
    output quantizer under `"act_" + the inner layer's name`."""
    out = {}
    for layer in qat.layers:
        if isinstance(layer, QuantizeLayer):
            source = layer.inbound_nodes[0].inbound_layers  # (one layer: not a list)
            out[PREFIX + source.name] = layer.quantizer_vars
        elif getattr(layer, "_output_quantizers", None):
            out[PREFIX + layer.layer.name] = layer._output_quantizer_vars  # noqa: SLF001
    return out


def _copy_ranges(model3, ranges, qat) -> None:
    """The Keras 3 model's trained activation ranges into its twin's TF-MOT
    quantizers, which the same rule (`core.rules.outputs_to_quantize`) put at
    the same places.

    Raises:
        ValueError: When the two models quantize activations at different
            places (no range may be left as TF-MOT starts it).
    """
    twin = _twin_ranges(qat)
    if set(twin) != set(ranges):
        raise ValueError(
            f"The tf_keras twin of {model3.name!r} quantizes activations after "
            f"{sorted(twin)}, the Keras 3 model after {sorted(ranges)}; their ranges cannot "
            "be matched one to one."
        )
    for name, layer in ranges.items():
        twin[name]["min_var"].assign(keras.ops.convert_to_numpy(layer.range_min.value))
        twin[name]["max_var"].assign(keras.ops.convert_to_numpy(layer.range_max.value))


def _assign_vars(k3_vars, tf_vars):
    for key, var in k3_vars.items():
        tf_vars[key].assign(keras.ops.convert_to_numpy(var.value))
    if "log_scale" in k3_vars:
        tf_vars["scale_initialized"].assign(1.0)


def _copy_state(model3, qat):
    """Learned scales and 8-bit ranges of the Keras 3 model into its twin."""
    k3_items = {(layer, weight): state for layer, weight, _, state in k3_quantize.items(model3)}
    for item in weights.codebook_items(qat) + weights.int8_items(qat):
        state = k3_items.get((item.layer, item.weight)) or k3_items.get((item.layer, "kernel"))
        if state is None:
            continue
        _assign_vars(state.variables, item.qvars)
