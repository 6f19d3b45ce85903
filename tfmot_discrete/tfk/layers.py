"""`DiscreteMultiplier`: a learnable vector, multiplied into the data, whose
entries only take codebook values."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmot_discrete.core.specs import vector_length
from tfmot_discrete.tfk import quantizers as quantizers_mod
from tfmot_discrete.tfk._keras import called_by_keras3, keras, register


@register(package="tfmot_discrete")
class DiscreteMultiplier(keras.layers.Layer):
    """`outputs = inputs * q(kernel)`, with `q(kernel)` in the codebook.

    The layer keeps a float latent `kernel` of shape `(input_shape[-1],)` and
    projects it to the codebook on every call; training uses the quantizer's
    straight-through gradient, so the vector actually learns (unlike
    `inputs * tf.math.sign(kernel)`, whose gradient is zero).

    Args:
        quantizer: A `CodebookQuantizer`, or what `td.quantizers.get` takes
            (a codebook as a list of numbers, a preset name, a config dict).
            With a `scale`, one scale is learned or computed for the whole
            vector.
        kernel_initializer: Initializer of the latent vector. Defaults to
            `"glorot_uniform"`.
        values: The former name of `quantizer`, still accepted (and read
            from configs saved before the rename).

    Raises:
        ValueError: For a missing quantizer, or both `quantizer` and `values`.

    Example:

    >>> layer = DiscreteMultiplier([1, -1], kernel_initializer="ones")
    >>> layer(tf.ones((1, 3))).numpy().tolist()
    [[1.0, 1.0, 1.0]]
    """

    def __init__(
        self, quantizer=None, kernel_initializer="glorot_uniform", *, values=None, **kwargs
    ):
        if values is not None:
            if quantizer is not None:
                raise ValueError(
                    "Pass the codebook as `quantizer` only (`values` is its former name). "
                    f"Received: quantizer={quantizer!r}, values={values!r}"
                )
            quantizer = values
        if quantizer is None:
            raise ValueError(
                "`quantizer` is required: a CodebookQuantizer, a list of codebook values "
                "or a preset name. Received: quantizer=None"
            )
        super().__init__(**kwargs)
        q = quantizer if isinstance(quantizer, quantizers_mod.CodebookQuantizer) else None
        if q is None:
            q = (
                quantizers_mod.get(quantizer)
                if isinstance(quantizer, (dict, str))
                else (quantizers_mod.CodebookQuantizer(quantizer))
            )
        self.quantizer = q.with_channel_axes([])
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def __call__(self, inputs, *args, **kwargs):
        if called_by_keras3(inputs):
            # A Keras 3 model does not track a tf_keras layer's weights: it
            # would run, and its vector would never train.
            raise ValueError(
                f"DiscreteMultiplier {self.name!r} is the tf_keras layer (td.DiscreteMultiplier) "
                "and is being called from a Keras 3 model (`keras`, or `tf.keras` on "
                "TensorFlow >= 2.16), which would not train its vector. Use "
                "`td.keras3.DiscreteMultiplier` (the same arguments) in Keras 3 models, or build "
                "the model with tf_keras. Received: inputs of type "
                f"{type(inputs).__module__}.{type(inputs).__name__}"
            )
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape):
        dim = vector_length(self.name, input_shape)
        self.kernel = self.add_weight(
            "kernel", shape=(dim,), initializer=self.kernel_initializer, trainable=True
        )
        self._quantizer_vars = self.quantizer.build((dim,), "kernel", self)
        super().build(input_shape)

    @property
    def quantizer_vars(self) -> dict:
        """The variables the quantizer built (a learned scale), by name."""
        return self._quantizer_vars

    def folded_quantizer(self):
        """A scale-free `CodebookQuantizer` whose values are the codebook (the
        learned values, with `learn_values=True`) times the vector's current
        scale: what the projected vector holds, as a fixed codebook."""
        q = self.quantizer
        if q.scale is None and not q.learn_values:
            return q
        scale = 1.0
        if q.scale is not None:
            scale = np.asarray(q.quantized_scale(self.kernel, self._quantizer_vars)).reshape(-1)[0]
        values = q.codebook_of(self._quantizer_vars).values
        return quantizers_mod.CodebookQuantizer(
            np.asarray(values) * float(scale), gradient=q.gradient, per_channel_axis=[]
        )

    def quantized_kernel(self, training=False):
        """The vector as it multiplies the data: codebook values (times scale)."""
        return self.quantizer(self.kernel, training, self._quantizer_vars)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        k = (
            tf.cond(
                tf.cast(training, tf.bool),
                lambda: self.quantized_kernel(True),
                lambda: self.quantized_kernel(False),
            )
            if not isinstance(training, bool)
            else self.quantized_kernel(training)
        )
        return inputs * tf.cast(k, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "quantizer": keras.saving.serialize_keras_object(self.quantizer),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configs saved before `values` was renamed `quantizer` hold "values".
        quantizer = config.pop("quantizer", None)
        if quantizer is None:
            quantizer = config.pop("values", None)
        if isinstance(quantizer, dict):
            quantizer = keras.saving.deserialize_keras_object(quantizer)
        return cls(quantizer, **config)
