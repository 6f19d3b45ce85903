"""Every private API of another package that `tflite_export` uses, in one place.

Each entry says what it reaches and why no public way exists; a pinned
version upgrade then touches this file only.
"""

from __future__ import annotations

__all__ = ["QuantizeLayer", "drop_name", "drop_quantization"]

# TF-MOT exports no `QuantizeLayer` (the input fake-quant layer that
# `quantize_apply` inserts) under `tfmot.quantization.keras`; its module path
# is the only way to recognise a QAT model with int8 activations.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer,
)


def drop_quantization(tensor) -> None:
    """Removes a `model_editor` tensor's quantization parameters.

    TFLM's `model_editor.Tensor` writes its schema object `_fb` back as it
    was read, and offers no setter that clears the object's quantization.
    """
    tensor.quantization = None
    tensor._fb.quantization = None  # noqa: SLF001 - see the docstring


def drop_name(tensor) -> None:
    """Removes a `model_editor` tensor's name (TFLM reads none).

    `model_editor.Tensor` has no name setter; its schema object `_fb` holds it.
    """
    tensor._fb.name = None  # noqa: SLF001 - see the docstring
