"""`recalibrate_batchnorm` for Keras 3 models: BatchNormalization statistics
for the weights as they are now, on every backend."""

from __future__ import annotations

import numpy as np

from tfmot_discrete.keras3._k3 import keras


def batchnorm_layers(model) -> list:
    """The `BatchNormalization` layers of a Keras 3 model (its own layers; the
    quantized layers' wrappers hold none)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batchnorm(model, x, batch_size=128, max_batches=40) -> int:
    """Re-estimates every BatchNormalization's moving mean and variance.

    Resets them, then runs training-mode forward passes over up to
    `max_batches` batches of `x` with the momentum of batch `i` set to
    `i / (i + 1)`, so each moving statistic ends as the plain average over the
    batches; no weight changes (a stochastic codebook layer is sampled as in
    training). The Keras 3 counterpart of `td.recalibrate_batchnorm`.

    Args:
        model: A Keras 3 model (QAT or float).
        x: Inputs, an array `(N, ...)` (or a list of arrays for several inputs).
        batch_size: Samples per forward pass. Defaults to 128.
        max_batches: At most this many passes. Defaults to 40.

    Returns:
        The number of batches used.

    Raises:
        ValueError: For a model without BatchNormalization or an empty `x`.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no BatchNormalization layer to recalibrate.")
    arrays = list(x) if isinstance(x, list | tuple) else [x]
    n = len(arrays[0])
    if n == 0:
        raise ValueError(f"`x` holds no samples. Received: x of length {n}")
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.zeros(layer.moving_variance.shape))
    used = 0
    try:
        for start in range(0, n, batch_size):
            if used == max_batches:
                break
            for layer in layers:
                layer.momentum = used / (used + 1)
            batch = [a[start : start + batch_size] for a in arrays]
            model(batch if len(batch) > 1 else batch[0], training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used
