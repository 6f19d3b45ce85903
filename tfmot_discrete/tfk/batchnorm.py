"""`recalibrate_batchnorm`: BatchNormalization statistics for the weights as they are now.

A BatchNormalization layer's moving mean and variance average what its input
looked like during training, while the weights before it kept changing (and,
with a codebook, jumping between values). Re-estimating them once with the
final, projected weights removes that gap.
"""

from __future__ import annotations

import tensorflow as tf

from tfmot_discrete.core import moments
from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE, check_positive_int, input_batches
from tfmot_discrete.tfk import _keras
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.distill import Distiller


def batchnorm_layers(model) -> list:
    """Every `BatchNormalization` layer of `model`, also inside TF-MOT
    wrappers and nested models, in tracking order."""
    return [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]


class _Accumulator(moments.MomentSums):
    """Stands in for a BatchNormalization's `call`: normalizes with the batch's
    own statistics (as in training) and sums them, weighted by sample count
    (in variables, as it runs inside a `tf.function`)."""

    def zeros(self, shape):
        return tf.Variable(tf.zeros(shape, tf.float64), trainable=False)

    def read(self, value):
        return value.numpy()

    def __call__(self, inputs, training=None, **kwargs):
        layer = self.layer
        x = tf.cast(inputs, tf.float32)
        axes = [a % x.shape.rank for a in layer.axis]
        reduce = [i for i in range(x.shape.rank) if i not in axes]
        mean, var = tf.nn.moments(x, reduce, keepdims=True)
        bshape = mean.shape

        def param(v):
            return None if v is None else tf.reshape(tf.cast(v, tf.float32), bshape)

        y = tf.nn.batch_normalization(
            x, mean, var, param(layer.beta), param(layer.gamma), layer.epsilon
        )
        n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduce)), tf.float64)
        pshape = self.total.shape
        m64 = tf.reshape(tf.cast(mean, tf.float64), pshape)
        sq64 = tf.reshape(tf.cast(var, tf.float64), pshape) + tf.square(m64)
        updates = [
            self.total.assign_add(n * m64),
            self.total_sq.assign_add(n * sq64),
            self.count.assign_add(n),
        ]
        with tf.control_dependencies(updates):
            return tf.cast(tf.identity(y), inputs.dtype)


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE) -> int:
    """Re-estimates every BatchNormalization's moving mean and variance.

    Runs the model over `data` with its weights as they are now (a QAT
    model's weights projected to their codebooks), each BatchNormalization
    normalizing with its batch's statistics as in training, and sets the
    moving mean and variance to the mean and variance of its input over all
    the samples seen: the moving mean is the cumulative average of the batch
    means (momentum `i/(i+1)`, weighted by batch size), the moving variance
    the cumulative average of the batch second moments minus the squared
    mean (so that it also counts the spread between batch means). With one
    batch holding all the data, inference then computes exactly what
    training mode computes on it. Every other layer runs in
    inference mode (no dropout, activation ranges not updated). No variable
    other than the moving statistics changes: trainable weights, optimizer
    state and activation ranges stay as they were.

    Call it after training a QAT model (or on its stripped copy), before
    evaluating, saving or exporting; `RecalibrateBatchNorm` does it at the
    end of `fit`.

    Args:
        model: A tf_keras or Keras 3 model: from `quantize_model`,
            stripped, or plain; for a `Distiller`, its student. A Keras 3
            model (any backend) runs eagerly through
            `tfmot_discrete.keras3.recalibrate_batchnorm`, with the same
            statistics.
        data: Inputs: an array (a list of arrays for several inputs), a
            tuple `(x, y)` (`y` is ignored) or a `tf.data.Dataset` of inputs
            or of `(x, y)` tuples, batched or not. A few thousand training
            samples are enough.
        steps: Use at most this many batches. Defaults to `None`: one pass
            over `data` (an infinite dataset needs `steps`).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Returns:
        The number of batches used.

    Raises:
        ValueError: For a model that is not a Keras model, data that does
            not fit it, or a bad `steps` or `batch_size`.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> L = td.keras.layers
    >>> model = td.keras.Sequential([td.keras.Input((4,)), L.Dense(3), L.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> td.recalibrate_batchnorm(model, x, batch_size=16)
    4
    >>> bn = model.layers[1]
    >>> bool(np.allclose(bn.moving_mean.numpy(), model.layers[0](x).numpy().mean(0), atol=1e-5))
    True

    References:
        Ioffe and Szegedy, Batch Normalization (2015), section 3.1 (inference
        statistics over the training set after training).
    """
    if _keras.is_keras3_object(model):
        from tfmot_discrete.keras3 import batchnorm as k3  # noqa: PLC0415  (imports Keras 3)

        return k3.recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)
    if isinstance(model, Distiller):
        model = model.student
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a tf_keras model or a Keras 3 model. Received: model of type "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    batches = input_batches(model, data, batch_size=batch_size, steps=steps)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return moments.recalibrate(batchnorm_layers(model), batches, _Accumulator, forward)


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Calls `recalibrate_batchnorm` on the trained model at the end of `fit`.

    With a `Distiller`, its student is recalibrated (the teacher is left
    alone). It goes to the `fit` of tf_keras and Keras 3 models alike.

    Args:
        data: Inputs, as for `recalibrate_batchnorm`.
        steps: Use at most this many batches. Defaults to `None` (one pass).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Example:

        model.fit(x, y, epochs=5, callbacks=[td.RecalibrateBatchNorm(x, steps=40)])
    """

    def __init__(self, data, steps=None, batch_size=DEFAULT_BATCH_SIZE):
        super().__init__()
        check_positive_int("steps", steps, allow_none=True)
        check_positive_int("batch_size", batch_size, allow_none=False)
        self.data = data
        self.steps = steps
        self.batch_size = batch_size

    def on_train_end(self, logs=None):
        recalibrate_batchnorm(self.model, self.data, steps=self.steps, batch_size=self.batch_size)
