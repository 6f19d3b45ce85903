"""The public entry points that take tf_keras and Keras 3 models alike.

`quantize_model`, `strip_quantization`, `summary` and `recalibrate_batchnorm`
hand a Keras 3 model to `tfmot_discrete.keras3` (which gives a Keras 3 model
back) and a tf_keras model to the TF-MOT path (`tfmot_discrete.tfk`). Each
path loads on first use: a Keras 3 model never loads TensorFlow, tf_keras or
TF-MOT here.
"""

from __future__ import annotations

from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE
from tfmot_discrete.core.specs import is_keras3_object


def quantize_model(model, quantizer, activations=None, strict=False, in_place=False):
    """Makes every supported layer train its weights to a codebook.

    A tf_keras model goes through TF-MOT (`tfmot_discrete.tfk.quantize.
    quantize_model`, which documents the arguments in full); a Keras 3 model
    (TensorFlow, JAX or PyTorch backend; Sequential, Functional, subclassed,
    KerasHub) through `tfmot_discrete.keras3`, and comes back a Keras 3 model.

    Args:
        model: A built tf_keras Sequential or Functional model, or any built
            Keras 3 model.
        quantizer: A `CodebookQuantizer` (or what `td.quantizers.get` takes),
            `"int8"`, or a mapping `{layer name or weight path regex:
            quantizer | "int8" | None}`.
        activations: `"int8"` for simulated 8-bit activations (tf_keras
            only). Defaults to `None`.
        strict: Raise instead of warning when a kernel-like weight would
            stay float. Defaults to `False`.
        in_place: Keras 3 only: put the wrappers into `model` itself instead
            of a copy (see `tfmot_discrete.keras3.quantize_model`). Defaults
            to `False`.

    Returns:
        The QAT model.
    """
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415  (imports Keras 3)

        return k3.quantize_model(
            model, quantizer, activations=activations, strict=strict, in_place=in_place
        )
    if in_place is not False:
        raise ValueError(
            "`in_place=True` is for Keras 3 models; a tf_keras model is always rebuilt by "
            f"TF-MOT. Received: in_place={in_place!r}"
        )
    from tfmot_discrete.tfk import quantize as tfk  # noqa: PLC0415  (imports TF-MOT)

    return tfk.quantize_model(model, quantizer, activations=activations, strict=strict)


def strip_quantization(model):
    """Returns the plain model: wrappers removed, weights projected (see
    `tfmot_discrete.tfk.quantize.strip_quantization`; a Keras 3 model gives
    a Keras 3 model)."""
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415

        return k3.strip_quantization(model)
    from tfmot_discrete.tfk import quantize as tfk  # noqa: PLC0415

    return tfk.strip_quantization(model)


def summary(model, print_fn=print):
    """A table of a QAT model's codebook weights: layer (the weight's path in
    the layer tree), codebook, bits per weight, memory and value usage (see
    `tfmot_discrete.tools.summary`).

    Args:
        model: A tf_keras or Keras 3 model from `quantize_model`, or a
            stripped one holding `DiscreteMultiplier` layers.
        print_fn: Called with the whole table. Defaults to `print`.

    Returns:
        The table as a string.
    """
    if is_keras3_object(model):
        from tfmot_discrete.tools import keras3_summary as k3_summary  # noqa: PLC0415

        # Read natively (any model class); the table is the same code's.
        return k3_summary.summary(model, print_fn=print_fn)
    from tfmot_discrete.tools import summary as summary_mod  # noqa: PLC0415

    return summary_mod.summary(model, print_fn=print_fn)


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE) -> int:
    """Re-estimates every BatchNormalization's moving mean and variance with
    the weights as they are now (see `tfmot_discrete.tfk.batchnorm.
    recalibrate_batchnorm` for the statistics; a Keras 3 model runs eagerly
    through `tfmot_discrete.keras3.recalibrate_batchnorm`, on any backend).

    Returns:
        The number of batches used.
    """
    if is_keras3_object(model) or is_keras3_object(getattr(model, "student", None)):
        from tfmot_discrete.keras3 import batchnorm as k3  # noqa: PLC0415

        return k3.recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)
    from tfmot_discrete.tfk import batchnorm as tfk  # noqa: PLC0415

    return tfk.recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)


def to_tf_keras(model):
    """Rebuilds a Keras 3 model in tf_keras (a QAT model as a QAT model); see
    `tfmot_discrete.tools.bridge.to_tf_keras`."""
    from tfmot_discrete.tools import bridge  # noqa: PLC0415

    return bridge.to_tf_keras(model)
