"""Each Keras 3 `QuantizeWrapper` and `DiscreteMultiplier` draws its own
stochastic-rounding noise: two layers of the same shape and weights round
differently (one shared seed made them round the same)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SEEDS = """
import keras
import numpy as np

import tfmot_discrete as td

keras.utils.set_random_seed(0)
q = td.CodebookQuantizer([-1, 0, 1], stochastic=True)
x = np.full((1, 256), 1.0, "float32")
kernel = np.full((256,), 0.5, "float32")  # halfway: each entry rounds up or down at random


def draw(layer):
    return keras.ops.convert_to_numpy(layer(x, training=True))


a, b = td.keras3.DiscreteMultiplier(q), td.keras3.DiscreteMultiplier(q)
for m in (a, b):
    m.build(x.shape)
    m.kernel.assign(kernel)
print("multipliers differ:", bool((draw(a) != draw(b)).any()))
print("a multiplier redraws:", bool((draw(a) != draw(a)).any()))

dense = [keras.layers.Dense(256, use_bias=False, kernel_initializer="zeros") for _ in range(2)]
w1, w2 = (td.keras3.QuantizeWrapper(d, q) for d in dense)
for w in (w1, w2):
    w.build(x.shape)
    w.layer.kernel.assign(np.full((256, 256), 0.5, "float32"))
print("wrappers differ:", bool((draw(w1) != draw(w2)).any()))
"""


def test_equal_shaped_layers_draw_different_rounding_noise():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", SEEDS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "multipliers differ: True" in result.stdout, result.stdout
    assert "a multiplier redraws: True" in result.stdout, result.stdout
    assert "wrappers differ: True" in result.stdout, result.stdout
