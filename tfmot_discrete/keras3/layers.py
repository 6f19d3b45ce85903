"""`DiscreteMultiplier` for Keras 3: a learnable vector, multiplied into the
data, whose entries only take codebook values, on every backend."""

from __future__ import annotations

import numpy as np

from tfmot_discrete.core import quantizers as quantizers_mod
from tfmot_discrete.core.specs import vector_length
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.keras3._k3 import keras, ops, register


@register(package="tfmot_discrete")
class DiscreteMultiplier(keras.layers.Layer):
    """`outputs = inputs * q(kernel)`, with `q(kernel)` in the codebook.

    The Keras 3 twin of `td.DiscreteMultiplier`: the same arguments, the same
    straight-through training of the latent `kernel` of shape
    `(input_shape[-1],)`, on the TensorFlow, JAX and PyTorch backends.

    Args:
        values: A codebook (list of numbers), a preset name or a
            `CodebookQuantizer`. With a `scale`, one scale for the vector.
        kernel_initializer: Initializer of the latent vector. Defaults to
            `"glorot_uniform"`.

    Example:

    >>> layer = DiscreteMultiplier([1, -1], kernel_initializer="ones")
    >>> ops.convert_to_numpy(layer(ops.ones((1, 3)))).tolist()
    [[1.0, 1.0, 1.0]]
    """

    def __init__(self, values, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if isinstance(values, quantizers_mod.CodebookQuantizer):
            q = values
        elif isinstance(values, (dict, str)):
            q = quantizers_mod.get(values)
        else:
            q = quantizers_mod.CodebookQuantizer(values)
        self.quantizer = q.with_channel_axes([])
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Its own seed (drawn from Python's `random`, which
        # `keras.utils.set_random_seed` seeds): equal-shaped layers draw different
        # rounding noise.
        self.seed_generator = keras.random.SeedGenerator()
        self.state = None

    def build(self, input_shape):
        dim = vector_length(self.name, input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=(dim,), initializer=self.kernel_initializer
        )
        self.state = k3q.make_state(self, self.kernel, self.quantizer)
        k3q.initialize(self.state, self.kernel.value)
        self.built = True

    def quantized_kernel(self, training=False):
        """The vector as it multiplies the data: codebook values (times scale)."""
        return k3q.quantize(self.state, self.kernel.value, training, self.seed_generator)

    def folded_quantizer(self) -> quantizers_mod.CodebookQuantizer:
        """A scale-free `CodebookQuantizer` of the codebook (the learned values,
        with `learn_values=True`) times the current scale: what the projected
        vector holds, as a fixed codebook."""
        q = self.quantizer
        if q.scale is None and not q.learn_values:
            return q
        scale = float(np.asarray(k3q.scale_of(self.state, self.kernel.value)).reshape(-1)[0])
        values = q.codebook_of(self.state.variables).values
        return quantizers_mod.CodebookQuantizer(
            np.asarray(values) * scale, gradient=q.gradient, per_channel_axis=[]
        )

    def call(self, inputs, training=None):
        k = self.quantized_kernel(bool(training))
        return inputs * ops.cast(k, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "values": self.quantizer.get_config(),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
