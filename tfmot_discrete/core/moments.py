"""BatchNormalization statistics from moment sums, for both Keras paths.

`recalibrate_batchnorm` (tf_keras) and `tfmot_discrete.keras3.batchnorm`
(Keras 3, every backend) sum each BatchNormalization input's per-channel
first and second moments over the data, weighted by sample count; the
driver that runs the model (`recalibrate`) and the statistics they set come
from here, each path passing its own accumulator and forward pass.
"""

from __future__ import annotations

import numpy as np

#: Options of a BatchNormalization layer that the recalibration does not model,
#: with the value that turns each off.
_UNSUPPORTED = (("renorm", False), ("virtual_batch_size", None), ("adjustment", None))


def check_supported(layer) -> None:
    """Raises for a BatchNormalization layer whose statistics a plain average
    cannot give (batch renormalization, virtual batches, an adjustment)."""
    for attr, off in _UNSUPPORTED:
        if getattr(layer, attr, off) not in (off,):
            raise ValueError(
                f"BatchNormalization layer {layer.name!r} sets `{attr}`, which "
                f"recalibrate_batchnorm does not support. Received: {attr}="
                f"{getattr(layer, attr)!r}"
            )


def statistics(total, total_sq, count) -> tuple[np.ndarray, np.ndarray] | None:
    """`(mean, variance)` over all samples from the sums of `n x batch mean`,
    `n x batch second moment` and `n`; None when nothing was counted.

    The variance is the mean second moment minus the squared mean: it counts
    the spread between batch means too.

    Example:

    >>> m, v = statistics(np.array([2 * 1.0 + 2 * 3.0]), np.array([2 * 1.0 + 2 * 9.0]), 4.0)
    >>> m.tolist(), v.tolist()
    ([2.0], [1.0])
    """
    count = float(count)
    if count == 0:
        return None
    mean = np.asarray(total, np.float64) / count
    var = np.maximum(np.asarray(total_sq, np.float64) / count - np.square(mean), 0.0)
    return mean, var


class MomentSums:
    """Per-channel sums of `n x batch mean`, `n x batch second moment` and
    `n` for one BatchNormalization layer, and their assignment to its moving
    statistics. Each path's accumulator derives from it and says how its sums
    are held (`zeros`) and read back (`read`)."""

    def __init__(self, layer):
        check_supported(layer)
        self.layer = layer
        shape = tuple(layer.moving_mean.shape)
        self.total = self.zeros(shape)
        self.total_sq = self.zeros(shape)
        self.count = self.zeros(())

    def zeros(self, shape):
        """A zero sum of `shape` (float64)."""
        return np.zeros(shape, np.float64)

    def read(self, value) -> np.ndarray:
        """A sum as a NumPy array."""
        return np.asarray(value)

    def assign(self) -> None:
        """Sets the layer's moving mean and variance from the sums (nothing
        when no sample was counted)."""
        stats = statistics(self.read(self.total), self.read(self.total_sq), self.read(self.count))
        if stats is None:
            return
        dtype = np.asarray(self.read(self.layer.moving_mean)).dtype
        for variable, value in zip((self.layer.moving_mean, self.layer.moving_variance), stats):
            variable.assign(value.astype(dtype))


def recalibrate(layers, batches, accumulator, forward) -> int:
    """Sets the moving statistics of the BatchNormalization `layers` from the
    model's inputs `batches`; returns the number of batches.

    Each layer's `call` is stood in for by `accumulator(layer)` (a
    `MomentSums` that normalizes with the batch's own moments and sums them)
    while `forward(batch)` runs the model in inference mode over every
    batch; then each accumulator assigns its statistics. The layers get
    their own `call` back even when a batch fails.

    Args:
        layers: The BatchNormalization layers of the model.
        batches: Model inputs, one per batch (from `data.input_batches`).
        accumulator: The path's `MomentSums` subclass.
        forward: Runs the model on one batch in inference mode.
    """
    if not layers:
        return len(batches)
    accumulators = [accumulator(layer) for layer in layers]
    for layer, acc in zip(layers, accumulators):
        object.__setattr__(layer, "call", acc)
    try:
        for b in batches:
            forward(b)
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
    for acc in accumulators:
        acc.assign()
    return len(batches)
