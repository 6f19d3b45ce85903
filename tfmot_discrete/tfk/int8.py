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
import sys

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import quantizers as core_quantizers
from tfmot_discrete.core.quantizers import INT8, INT8_QMAX, Int8WeightQuantizer
from tfmot_discrete.core.quantizers import int8_quantizer_for as quantizer_for
from tfmot_discrete.tfk._keras import register

_qk = tfmot.quantization.keras

__all__ = ["INT8", "INT8_QMAX", "Int8Values", "Int8WeightQuantizer", "int8_values", "quantizer_for"]

#: The TF-MOT quantizer doing the work, per `per_axis`.
_LAST_VALUE = {
    per_axis: _qk.quantizers.LastValueQuantizer(
        num_bits=8, per_axis=per_axis, symmetric=True, narrow_range=True
    )
    for per_axis in (False, True)
}


def build(q: Int8WeightQuantizer, tensor_shape, name, layer):
    """`Int8WeightQuantizer.build`: `LastValueQuantizer`'s range variables."""
    return _LAST_VALUE[q.per_axis].build(tensor_shape, name, layer)


def call(q: Int8WeightQuantizer, inputs, training, weights, **kwargs):
    """`Int8WeightQuantizer.__call__`: `LastValueQuantizer`'s fake quant, the
    ranks it does not take per axis flattened to `(-1, channels)` around it."""
    last_value = _LAST_VALUE[q.per_axis]
    rank = inputs.shape.rank
    if q.per_axis and rank not in (2, 4):
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        out = last_value(flat, training, weights, **kwargs)
        return tf.reshape(out, tf.shape(inputs))
    return last_value(inputs, training, weights, **kwargs)


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


# The plain class (`core.quantizers`) becomes TF-MOT's: a `Quantizer` and a
# tf_keras serializable under its old name.
core_quantizers.provide_behaviour(Int8WeightQuantizer, sys.modules[__name__])
_qk.quantizers.Quantizer.register(Int8WeightQuantizer)
register(package="tfmot_discrete")(Int8WeightQuantizer)
