"""`recalibrate_batchnorm`: BatchNormalization statistics for the weights as they are now.

A BatchNormalization layer's moving mean and variance average what its input
looked like during training, while the weights before it kept changing (and,
with a codebook, jumping between values). Re-estimating them once with the
final, projected weights removes that gap.
"""

from __future__ import annotations

import tensorflow as tf

from tfmot_discrete.core import moments
from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE, input_batches
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
    """`td.recalibrate_batchnorm` for a tf_keras model (QAT, stripped or
    plain; a `Distiller`'s student): the forward pass in a `tf.function`,
    the statistics summed in float64 variables. Arguments, return value and
    errors as in `td.recalibrate_batchnorm`."""
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
