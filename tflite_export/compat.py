"""Every private API of another package that `tflite_export` uses, in one place.

Each entry says what it reaches and why no public way exists; a pinned
version upgrade then touches this file only.
"""

from __future__ import annotations

__all__ = [
    "QuantizeLayer",
    "child_layers",
    "drop_name",
    "drop_quantization",
    "input_signature",
    "keep_input_multiplications",
    "set_weight_vars",
    "wrap_quantization",
]

# TF-MOT exports no `QuantizeLayer` (the input fake-quant layer that
# `quantize_apply` inserts, which marks a QAT model with int8 activations);
# the core's compat module holds its private import path, written once.
from tfmot_discrete.tfk.compat import QuantizeLayer


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


def set_weight_vars(wrapper, items) -> None:
    """Replaces the `(weight, quantizer, quantizer variables)` list that a TF-MOT
    `QuantizeWrapperV2` applies in `call`.

    TF-MOT keeps the list in the private `_weight_vars` and offers no setter;
    the export swaps a weight's quantizer for an identity once the weight
    holds its projected values (`convert.baked_qat_copy`).
    """
    wrapper._weight_vars = list(items)  # noqa: SLF001 - see the docstring


def keep_input_multiplications(converter) -> None:
    """Stops the TFLite converter from folding a multiplication of a fully
    connected operator's input (the gamma of a LayerNormalization in front of
    a Dense layer or an attention projection) into its weights.

    Folded, a codebook weight's row becomes `codes x channel scale x gamma`
    per input: no per-output-channel lattice stores it exactly. The switch
    is the converter's private `_experimental_disable_fuse_mul_and_fc`;
    `TFLiteConverter` offers no public one.
    """
    converter._experimental_disable_fuse_mul_and_fc = True  # noqa: SLF001 - see the docstring


def wrap_quantization(converter, wrapper) -> None:
    """Makes the TFLite converter's post-training quantization (calibration,
    then its MLIR quantizer) run as `wrapper(quantize, float_model)`, where
    `quantize(model)` is the converter's own step and both models are
    flatbuffer bytes.

    The converter hands the float file to its private `_quantize` method and
    offers no public hook between conversion and quantization; the export
    edits the float file there (`convert.quantized_deterministically`).
    """
    quantize = converter._quantize  # noqa: SLF001 - see the docstring

    def wrapped(model, *args, **kwargs):
        return wrapper(lambda m: quantize(m, *args, **kwargs), model)

    converter._quantize = wrapped  # noqa: SLF001 - see the docstring


def child_layers(layer) -> list:
    """The layers a Keras 3 layer (or model) holds directly, in tracking order.

    Keras 3 walks a layer tree with the private `_flatten_layers` (its own
    `Model.quantize` does); `Model.layers` lists a model's top level only,
    and a plain `Layer` offers no public list of its sublayers.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))  # noqa: SLF001


def input_signature(model):
    """The input structure of a built Keras 3 model as `keras.InputSpec`s
    (a dict for dict inputs), as Keras's own exporters infer it.

    Keras offers it only as `keras.src.export.export_utils.get_input_signature`:
    `ExportArchive` needs a signature, and a subclassed model has no `inputs`.
    """
    from keras.src.export.export_utils import get_input_signature  # noqa: PLC0415

    return get_input_signature(model)
