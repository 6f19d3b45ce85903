"""`finetune_schedule`: the learning rate for fine-tuning a trained model to a codebook.

Measured on the MNIST-1D CNN of `benchmarks/` (benchmarks/RESULTS.md,
ablation rows): starting from the trained float model, Adam at the float
training's own peak learning rate with a 10 % linear warmup and a cosine decay
to 0 beats a constant learning rate and a 0.3x peak.
"""

from __future__ import annotations

import numbers

from tfmot_discrete.tfk import keras

#: Where the warmup starts, relative to the peak learning rate.
WARMUP_START = 0.01


def finetune_schedule(peak_lr, steps, warmup=0.1, *, keras3=False):
    """Linear warmup to `peak_lr`, then cosine decay to 0, over `steps` steps.

    Use the peak learning rate the float model was trained with, and as many
    steps as its training took; pass the result to the optimizer.

    Args:
        peak_lr: The learning rate reached at the end of the warmup (> 0).
        steps: Total optimizer steps of the fine-tuning, warmup included (>= 1),
            e.g. `epochs * ceil(len(x_train) / batch_size)`.
        warmup: Share of `steps` spent rising linearly from 1 % of `peak_lr`
            to `peak_lr`, in `[0, 1)`. Defaults to 0.1.
        keras3: Build the schedule with Keras 3 (`import keras`), for a Keras 3
            optimizer on any backend, instead of with tf_keras. Defaults to
            `False`.

    Returns:
        A `CosineDecay` learning-rate schedule of tf_keras, or of Keras 3 for
        `keras3=True`.

    Raises:
        ValueError: If an argument is outside the range above.

    Example:

    >>> import tfmot_discrete as td
    >>> lr = td.finetune_schedule(1e-2, steps=1000)
    >>> [round(float(lr(s)), 5) for s in (0, 100, 550, 1000)]
    [0.0001, 0.01, 0.005, 0.0]
    >>> optimizer = td.keras.optimizers.Adam(lr)

    For a Keras 3 model (`td.quantize_model` of a Keras 3 model):

    >>> import keras
    >>> optimizer = keras.optimizers.Adam(td.finetune_schedule(1e-2, 1000, keras3=True))
    """
    if (
        isinstance(peak_lr, bool)
        or not isinstance(peak_lr, numbers.Real)
        or not peak_lr > 0
        or peak_lr == float("inf")
    ):
        raise ValueError(f"`peak_lr` must be a finite number > 0. Received: peak_lr={peak_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1. Received: steps={steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Real) or not 0 <= warmup < 1:
        raise ValueError(f"`warmup` must be a number in [0, 1). Received: warmup={warmup!r}")
    if not isinstance(keras3, bool):
        raise ValueError(f"`keras3` must be True or False. Received: keras3={keras3!r}")
    schedules = keras.optimizers.schedules
    if keras3:
        import keras as keras_3  # noqa: PLC0415  (Keras 3, only when asked for)

        schedules = keras_3.optimizers.schedules
    peak, steps = float(peak_lr), int(steps)
    warm = int(warmup * steps)
    if not warm:
        return schedules.CosineDecay(peak, steps)
    return schedules.CosineDecay(
        peak * WARMUP_START, steps - warm, warmup_target=peak, warmup_steps=warm
    )
