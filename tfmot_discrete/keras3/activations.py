"""8-bit activations on Keras 3: `quantize_model(..., activations="int8")`.

A full-integer file (`full_int8`, `tflm_packed`) quantizes the model's inputs
and the outputs of its operations to 8 bits. Trained with float activations,
the file then computes what the model never saw; trained with them
fake-quantized, at the ranges the file will use, it computes what was
trained. `quantize_model(..., activations="int8")` puts an
`ActivationQuantizer` layer after each float input and after each layer
whose output the file quantizes (`core.rules.outputs_to_quantize`, the rule the
tf_keras path follows too). The ranges are tracked in training as TF-MOT's
default 8-bit scheme tracks them, so that a model's tf_keras twin
(`td.to_tf_keras`, which the export converts) computes what the Keras 3
model computes:

- an input: every value seen (`"all_values"`, TF-MOT's `AllValuesQuantizer`);
- a layer output: an exponential moving average of each batch's range
  (`"moving_average"`, TF-MOT's `MovingAverageQuantizer`, decay 0.999);
- an input's range starts at `[0, 0]` (the quantizer outputs zeros until
  it has seen data), an output's at `[-6, 6]`, as TF-MOT's do; both always
  hold 0; at inference the range is fixed. The fake quantization is TensorFlow's
  `fake_quant_with_min_max_vars` (8 bits, 256 levels, the range nudged so
  that 0 is a level), written in `keras.ops` for every backend, with the
  straight-through estimator inside the range and no gradient outside.
"""

from __future__ import annotations

from tfmot_discrete.core import rules
from tfmot_discrete.keras3 import _k3
from tfmot_discrete.keras3 import ops as qops
from tfmot_discrete.keras3._k3 import keras, ops, register

#: How a range follows the values it sees in training.
TRACKING = ("moving_average", "all_values")
#: TF-MOT's starting ranges and moving-average decay.
INITIAL_RANGE = {"moving_average": (-6.0, 6.0), "all_values": (0.0, 0.0)}
EMA_DECAY = 0.999
#: An `ActivationQuantizer` is named this + the name of what it follows.
PREFIX = "act_"
LEVELS = 255  # 8 bits: 256 levels, 255 steps


def fake_quant(x, range_min, range_max):
    """`x` rounded to the 256 levels of `[range_min, range_max]` (nudged so
    that 0 is one of them), clamped to it, as TensorFlow's
    `fake_quant_with_min_max_vars` computes it. Gradients pass where `x` is
    inside the range (straight-through), none outside; none to the range."""
    range_min = ops.stop_gradient(ops.cast(range_min, x.dtype))
    range_max = ops.stop_gradient(ops.cast(range_max, x.dtype))
    scale = ops.maximum((range_max - range_min) / LEVELS, 1e-12)
    zero_point = ops.clip(ops.floor(-range_min / scale + 0.5), 0.0, float(LEVELS))
    nudged_min = -zero_point * scale
    nudged_max = (LEVELS - zero_point) * scale
    if _k3.backend() == "torch":
        return qops.torch_fake_quant(x, zero_point, scale, nudged_min, nudged_max)
    clamped = ops.clip(x, nudged_min, nudged_max)
    # The level, then (level - zero point) x scale: TensorFlow's kernel's
    # operations in its order, so that the values are its values bit for bit.
    levels = ops.floor((clamped - nudged_min) / scale + 0.5)
    value = ops.stop_gradient((levels - zero_point) * scale)
    # The gradient is 1 inside the range, its ends included (`clip`'s is
    # 1/2 at an end on JAX), and 0 outside; the value is exactly `value`.
    inside = ops.where((x >= nudged_min) & (x <= nudged_max), x, ops.zeros_like(x))
    return value + (inside - ops.stop_gradient(inside))


@register(package="tfmot_discrete")
class ActivationQuantizer(keras.layers.Layer):
    """8-bit fake quantization of a tensor, its range tracked in training.

    `quantize_model(..., activations="int8")` puts these layers in a Keras 3
    model (named `"act_" + the layer or input they follow`); the export
    takes their ranges as the file's activation scales.

    Args:
        tracking: `"moving_average"` (a layer output) or `"all_values"` (a
            model input). Defaults to `"moving_average"`.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from tfmot_discrete.keras3.activations import ActivationQuantizer
    >>> q = ActivationQuantizer()
    >>> float(q(np.array([1.0]))[0]) == 1.0  # not a level of [-6, 6]
    False
    """

    def __init__(self, tracking="moving_average", **kwargs):
        if tracking not in TRACKING:
            raise ValueError(
                f"`tracking` must be one of {list(TRACKING)}. Received: tracking={tracking!r}"
            )
        super().__init__(**kwargs)
        self.tracking = tracking
        self.supports_masking = True

    def build(self, input_shape=None):
        lo, hi = INITIAL_RANGE[self.tracking]
        self.range_min = self.add_weight(
            name="range_min", shape=(), initializer=keras.initializers.Constant(lo), trainable=False
        )
        self.range_max = self.add_weight(
            name="range_max", shape=(), initializer=keras.initializers.Constant(hi), trainable=False
        )
        self.built = True

    def call(self, inputs, training=None):
        lo, hi = self.range_min.value, self.range_max.value
        if training:
            seen_min = ops.minimum(ops.min(ops.stop_gradient(inputs)), 0.0)
            seen_max = ops.maximum(ops.max(ops.stop_gradient(inputs)), 0.0)
            seen_min, seen_max = ops.cast(seen_min, lo.dtype), ops.cast(seen_max, hi.dtype)
            if self.tracking == "all_values":
                lo, hi = ops.minimum(lo, seen_min), ops.maximum(hi, seen_max)
            else:
                lo = lo - (lo - seen_min) * (1.0 - EMA_DECAY)
                hi = hi - (hi - seen_max) * (1.0 - EMA_DECAY)
            self.range_min.assign(lo)
            self.range_max.assign(hi)
        return fake_quant(inputs, lo, hi)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config["tracking"] = self.tracking
        return config


def outputs_to_quantize(model) -> set[int]:
    """The ids of `model`'s layers whose output `activations="int8"`
    fake-quantizes (a Sequential or Functional model, before wrapping)."""
    consumers = _k3.consumers(model)
    producers = {}
    for layer in model.layers:
        for taker in consumers.get(id(layer), []):
            producers.setdefault(id(taker), []).append(layer)
    return rules.outputs_to_quantize(model.layers, producers, consumers)


def is_float_input(tensor) -> bool:
    """True for a model input an `ActivationQuantizer` takes (float values;
    token ids and other integers are not quantized)."""
    return "float" in str(tensor.dtype)
