"""A quantized Keras 3 model trained under `keras.distribution.DataParallel`
on two JAX CPU devices, in a process of its own.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python keras3_distributed_worker.py OUT_DIR

Writes `result.json`: the device count, the codes that changed in one
training step and whether the latent weights are replicated on both devices.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import keras
import numpy as np

import tfmot_discrete as td
from tfmot_discrete.keras3 import quantize as k3

L = keras.layers
keras.utils.set_random_seed(0)
devices = jax.devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


class Block(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = L.Dense(16, activation="relu")
        self.d2 = L.Dense(16)

    def call(self, x):
        return x + self.d2(self.d1(x))


inputs = keras.Input((8,))
model = keras.Model(inputs, L.Dense(3, name="head")(Block(name="block")(L.Dense(16)(inputs))))
qat = td.quantize_model(model, td.ternary())
qat.compile(
    keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(32, 8)).astype("float32"), np.arange(32) % 3
before = {w.label: w.codes for w in k3.codebook_weights(qat)}
qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
after = {w.label: w.codes for w in k3.codebook_weights(qat)}
latent = next(var for _, _, var, _ in k3.items(qat))
result = {
    "devices": len(devices),
    "weights": len(after),
    "flips": int(sum(np.sum(before[k] != after[k]) for k in after)),
    "replicated": len(latent.value.sharding.device_set) == len(devices),
}
(pathlib.Path(sys.argv[1]) / "result.json").write_text(json.dumps(result))
