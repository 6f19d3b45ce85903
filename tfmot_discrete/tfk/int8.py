"""8-bit weights for chosen layers: the `"int8"` value of a quantizer mapping.

`td.quantize_model(model, {"conv_0": "int8", ".*": td.ternary()})` trains
`conv_0`'s weights with TF-MOT's 8-bit weight fake quantization (symmetric,
narrow range `[-127, 127]`, one step per output channel, the range taken from
the last values of the weight) while the other layers use the codebook. An
exported file stores those weights as exactly the int8 values they trained
with.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.tfk._keras import register

_qk = tfmot.quantization.keras

#: The mapping value (and `quantizer` argument) asking for 8-bit weights.
INT8 = "int8"
#: Largest integer of the narrow symmetric 8-bit range.
INT8_QMAX = 127


@register(package="tfmot_discrete")
class Int8WeightQuantizer(_qk.quantizers.LastValueQuantizer):
    """TF-MOT's 8-bit weight quantizer, per output channel for every rank.

    `LastValueQuantizer(num_bits=8, per_axis, symmetric=True,
    narrow_range=True)`: forward `w_q = step_c x round(w / step_c)` with
    `step_c = max|w_c| / 127` from the weight's values at the last training
    step; straight-through gradient inside the range. TF-MOT's per-axis
    fake quant takes rank 2 and 4 tensors only: other ranks (Conv1D, Conv3D
    kernels) are flattened to `(-1, channels)` around it, with the same result
    per channel.

    Args:
        per_axis: One step per slice of the last axis (the output channel of
            Dense, Conv and the depth multiplier of DepthwiseConv); `False`
            for one step per tensor. Defaults to `True`.

    Example:

    >>> q = Int8WeightQuantizer()
    >>> Int8WeightQuantizer.from_config(q.get_config()) == q
    True
    """

    def __init__(self, per_axis=True):
        if not isinstance(per_axis, (bool, np.bool_)):
            raise ValueError(f"`per_axis` must be a bool. Received: per_axis={per_axis!r}")
        super().__init__(num_bits=8, per_axis=bool(per_axis), symmetric=True, narrow_range=True)

    def __call__(self, inputs, training, weights, **kwargs):
        rank = inputs.shape.rank
        if self.per_axis and rank not in (2, 4):
            flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
            out = super().__call__(flat, training, weights, **kwargs)
            return tf.reshape(out, tf.shape(inputs))
        return super().__call__(inputs, training, weights, **kwargs)

    def steps(self, weights) -> np.ndarray:
        """The step of each channel (one value when not per axis), float64."""
        lo = np.abs(np.asarray(weights["min_var"].numpy(), np.float64))
        hi = np.abs(np.asarray(weights["max_var"].numpy(), np.float64))
        return np.maximum(lo, hi) / INT8_QMAX

    def get_config(self):
        return {"per_axis": self.per_axis}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Int8WeightQuantizer) and self.per_axis == other.per_axis

    def __repr__(self):
        return f"Int8WeightQuantizer(per_axis={self.per_axis})"


def quantizer_for(channel_axes) -> Int8WeightQuantizer:
    """Per-channel when the last axis is among the weight's output-channel axes
    (so each stored channel has one step), else per-tensor."""
    return Int8WeightQuantizer(per_axis=-1 in list(channel_axes))


@dataclasses.dataclass
class Int8Values:
    """An 8-bit weight as it computes: `values = codes x steps`."""

    values: np.ndarray  # the fake-quantized weight, float64
    codes: np.ndarray  # integers in [-127, 127]
    steps: np.ndarray  # the step of each entry's channel (broadcast to values.shape)


def int8_values(quantizer: Int8WeightQuantizer, latent, qvars) -> Int8Values:
    """The integers and steps an 8-bit weight trained with."""
    values = np.asarray(quantizer(tf.convert_to_tensor(latent), False, weights=qvars), np.float64)
    steps = quantizer.steps(qvars)
    steps = np.broadcast_to(steps if quantizer.per_axis else steps.reshape(()), values.shape)
    safe = np.where(steps > 0, steps, 1.0)
    codes = np.clip(np.round(values / safe), -INT8_QMAX, INT8_QMAX)
    return Int8Values(values=values, codes=codes, steps=np.array(safe))
