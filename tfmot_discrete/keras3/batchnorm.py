"""`recalibrate_batchnorm` for Keras 3 models: BatchNormalization statistics
for the weights as they are now, on every backend.

The same statistics as the tf_keras path's (`tfmot_discrete.core.moments`): each
BatchNormalization normalizes with its batch's own moments while the model
runs in inference mode, and its moving mean and variance become the mean and
variance of its input over all the samples seen.
"""

from __future__ import annotations

import numpy as np

from tfmot_discrete.core import moments
from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE, input_batches
from tfmot_discrete.keras3._k3 import flatten_layers, keras, ops


def batchnorm_layers(model) -> list:
    """The `BatchNormalization` layers of a Keras 3 model, anywhere in its
    layer tree (a user's block, a subclassed model)."""
    return [
        layer
        for layer in flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


class _Accumulator(moments.MomentSums):
    """Stands in for a BatchNormalization's `call`: normalizes with the batch's
    own moments (as in training) and adds them to the sums (NumPy, eagerly)."""

    def read(self, value):
        return ops.convert_to_numpy(value)

    def __call__(self, inputs, training=None, mask=None):
        layer = self.layer
        x = ops.cast(inputs, "float32")
        rank = len(x.shape)
        axis = layer.axis % rank
        reduce = [i for i in range(rank) if i != axis]
        mean = ops.mean(x, axis=reduce, keepdims=True)
        var = ops.var(x, axis=reduce, keepdims=True)
        y = (x - mean) * ops.rsqrt(var + layer.epsilon)
        shape = [1] * rank
        shape[axis] = -1
        if layer.gamma is not None:
            y = y * ops.reshape(ops.cast(layer.gamma, "float32"), shape)
        if layer.beta is not None:
            y = y + ops.reshape(ops.cast(layer.beta, "float32"), shape)
        n = float(np.prod([x.shape[i] for i in reduce]))
        m64 = ops.convert_to_numpy(mean).astype(np.float64).reshape(self.total.shape)
        v64 = ops.convert_to_numpy(var).astype(np.float64).reshape(self.total.shape)
        self.total += n * m64
        self.total_sq += n * (v64 + np.square(m64))
        self.count += n
        return ops.cast(y, inputs.dtype)


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE) -> int:
    """`td.recalibrate_batchnorm` for a Keras 3 model (QAT, stripped or float).

    Runs the model eagerly over `data` in inference mode (the codebook
    weights projected, no dropout), each BatchNormalization normalizing with
    its batch's moments, and sets its moving mean and variance to the mean
    and variance of its input over all the samples seen. No other variable
    changes. Arguments, return value and errors as in
    `td.recalibrate_batchnorm`; for a Keras 3 `Distiller`, its student is
    recalibrated.
    """
    model = getattr(model, "student", model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a Keras 3 model. Received: model of type "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    batches = input_batches(model, data, batch_size=batch_size, steps=steps)
    return moments.recalibrate(
        batchnorm_layers(model), batches, _Accumulator, lambda b: model(b, training=False)
    )
