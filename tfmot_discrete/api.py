"""The public entry points that take tf_keras and Keras 3 models alike.

`quantize_model`, `strip_quantization` and `summary` hand a Keras 3 model to
`tfmot_discrete.keras3` (which gives a Keras 3 model back) and a tf_keras
model to the TF-MOT path.
"""

from __future__ import annotations

import functools

from tfmot_discrete.tfk import _keras
from tfmot_discrete.tfk import quantize as _tfk
from tfmot_discrete.tools.summary import summary as _summary


def _is_keras3(model) -> bool:
    return _keras.is_keras3_object(model)


@functools.wraps(_tfk.quantize_model)
def quantize_model(model, quantizer, activations=None, strict=False, in_place=False):
    # `in_place`: Keras 3 models only (see `tfmot_discrete.keras3.quantize_model`).
    if _is_keras3(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415  (imports Keras 3)

        return k3.quantize_model(
            model, quantizer, activations=activations, strict=strict, in_place=in_place
        )
    if in_place is not False:
        raise ValueError(
            "`in_place=True` is for Keras 3 models; a tf_keras model is always rebuilt by "
            f"TF-MOT. Received: in_place={in_place!r}"
        )
    return _tfk.quantize_model(model, quantizer, activations=activations, strict=strict)


@functools.wraps(_tfk.strip_quantization)
def strip_quantization(model):
    if _is_keras3(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415

        return k3.strip_quantization(model)
    return _tfk.strip_quantization(model)


@functools.wraps(_summary)
def summary(model, print_fn=print):
    if _is_keras3(model):
        from tfmot_discrete.keras3 import summary as k3_summary  # noqa: PLC0415

        # Read natively (any model class); the table is the same code's.
        return k3_summary.summary(model, print_fn=print_fn)
    return _summary(model, print_fn=print_fn)


def to_tf_keras(model):
    """Rebuilds a Keras 3 model in tf_keras (a QAT model as a QAT model); see
    `tfmot_discrete.keras3.to_tf_keras`."""
    from tfmot_discrete.keras3 import bridge  # noqa: PLC0415

    return bridge.to_tf_keras(model)
