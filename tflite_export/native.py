"""Keras 3 models converted as they are: `ExportArchive` -> SavedModel -> TFLite.

The native route of `tflite_export.keras3`, for Keras 3 models that tf_keras
cannot rebuild (a user's own layers, subclassed models, KerasHub layers and
backbones). Keras's `ExportArchive` traces the model's `call` (inference,
`training=False`) into a SavedModel, which `TFLiteConverter` converts with
TFLite's builtin operators only (Keras's own LiteRT export adds TensorFlow's
`SELECT_TF_OPS`, which TFLM and most runtimes lack: a layer needing one is
refused, naming the operation).

The QAT model is traced as it is: its latent weights are frozen into
constants, and the converter folds each weight's projection (codebook
values, scales, 8-bit rounding) into one constant tensor, which the export
then finds and checks against the values read by `keras3.quantized_weights`
like any converted weight. Needs the TensorFlow backend; `elsewhere` runs
the export of a model of another backend in a TensorFlow child process.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile

import numpy as np
import tensorflow as tf

from tflite_export import compat, convert, keras3
from tflite_export.errors import ExportError


@dataclasses.dataclass
class NativeModel:
    """A Keras 3 model on the native route, with what the pipeline asks of a
    model: its flat named inputs (`inputs`, `input_names`), its outputs' names
    in the order the file lists them, its layers (for token vocabularies), and
    `predict` on a list of arrays, one per flat input."""

    model: object
    structure: object  # the model's input structure, of `tf.TensorSpec`s
    inputs: list  # flat `tf.TensorSpec`s, named
    input_names: list[str]
    output_names: list[str]
    layers: list
    why: str  # why tf_keras could not rebuild it

    @property
    def name(self) -> str:
        return self.model.name

    def nest(self, arrays):
        """One array per flat input -> the model's input structure."""
        return tf.nest.pack_sequence_as(self.structure, list(arrays))

    def predict(self, x, verbose=0) -> np.ndarray:
        """The model's first output (by `tf.nest` order) on `x` (one array, or
        one per flat input), as NumPy, computed in batches."""
        arrays = x if isinstance(x, list | tuple) else [x]
        out = self.model.predict(self.nest(arrays), verbose=verbose)
        return np.asarray(tf.nest.flatten(out)[0])


def _names(structure) -> list[str]:
    """A name per flat input: dict keys for a dict, else the spec's own name or `input_i`."""
    flat = tf.nest.flatten(structure)
    if isinstance(structure, dict):
        return sorted(structure)  # `tf.nest` flattens a dict in sorted key order
    return [getattr(s, "name", None) or f"input_{i}" for i, s in enumerate(flat)]


def _tensor_spec(spec, name: str) -> tf.TensorSpec:
    """One sample per batch, as the interpreters run a file: with a free batch
    size, reshapes inside attention compute it with SHAPE and REDUCE_PROD
    operators, which TFLM lacks."""
    shape = tuple(spec.shape)
    return tf.TensorSpec((1, *shape[1:]), tf.as_dtype(spec.dtype or "float32"), name=name)


def _output_names(model, structure) -> list[str]:
    """The names the SavedModel signature gives the model's outputs."""
    import keras  # noqa: PLC0415

    symbolic = tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), structure)
    out = model.compute_output_spec(symbolic)
    if isinstance(out, dict):
        return sorted(out)
    return [f"output_{i}" for i in range(len(tf.nest.flatten(out)))]


def prepare(r: keras3.Route) -> NativeModel:
    """A Keras 3 model ready for `float_tflite` and the checks.

    Raises:
        ExportError: For a model not built, or on a backend other than TensorFlow.
    """
    import keras  # noqa: PLC0415  (Keras 3: only a Keras 3 model comes here)

    model = r.model
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Keras 3 model {model.name!r} is on the {keras.backend.backend()!r} backend; the "
            "native conversion traces it with TensorFlow. Save it (`model.save('m.keras')`) "
            "and export the file with KERAS_BACKEND=tensorflow. Received: a "
            f"{keras.backend.backend()} model"
        )
    if not model.built:
        raise ExportError(
            f"Keras 3 model {model.name!r} is not built: call it on a batch of inputs (or "
            "give it a `keras.Input`) before exporting it."
        )
    try:
        signature = compat.input_signature(model)
    except Exception as e:
        raise ExportError(
            f"Cannot read the input shapes of Keras 3 model {model.name!r} ({e}); call it on a "
            "batch of inputs before exporting it."
        ) from e
    names = _names(signature)
    flat = [_tensor_spec(s, n) for s, n in zip(tf.nest.flatten(signature), names)]
    structure = tf.nest.pack_sequence_as(signature, flat)
    if isinstance(structure, list | tuple) and len(structure) == 1:
        structure = structure[0]
    layers = [layer for _, layer in keras3.walk(model)]
    return NativeModel(
        model=model,
        structure=structure,
        inputs=flat,
        input_names=names,
        output_names=_output_names(model, structure),
        layers=layers,
        why=r.why or "",
    )


def free_inputs(nm: NativeModel) -> list[str]:
    """The inputs with a free length (a `None` beyond the batch dimension),
    each as `name (shape)`."""
    return [
        f"{n} {tuple(spec.shape)}"
        for n, spec in zip(nm.input_names, nm.inputs)
        if any(d is None for d in spec.shape[1:])
    ]


def with_lengths(nm: NativeModel, arrays) -> NativeModel:
    """`nm` with each input's free lengths fixed to those of `arrays` (one
    array `(N, ...)` per flat input): a file takes inputs of one shape."""
    flat = [
        tf.TensorSpec((1, *a.shape[1:]), spec.dtype, name=spec.name)
        for spec, a in zip(nm.inputs, arrays)
    ]
    structure = tf.nest.pack_sequence_as(nm.structure, flat)
    return dataclasses.replace(nm, structure=structure, inputs=flat)


def _saved_model(nm: NativeModel, directory: str) -> None:
    """The model's inference `call` as a SavedModel, through Keras's `ExportArchive`."""
    import keras  # noqa: PLC0415

    archive = keras.export.ExportArchive()
    # Not `archive.track(model)`: the endpoint tracks the variables it reads,
    # and `track` walks TensorFlow's object graph of the model for lookup
    # tables (which builtin operators do not convert), refusing a layer list
    # where the quantizer put a wrapper in a layer's place (a KerasHub
    # backbone's own layers: "A list element was replaced").
    archive.add_endpoint(
        "serve",
        functools.partial(nm.model.__call__, training=False),
        input_signature=[nm.structure],
    )
    archive.write_out(directory, verbose=False)


def _converter(directory: str):
    conv = tf.lite.TFLiteConverter.from_saved_model(directory)
    compat.keep_input_multiplications(conv)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv


def _samples(nm: NativeModel, representative):
    """The converter's calibration samples: one dict per sample, by input name."""
    for sample in representative:
        yield {
            n: np.asarray(s, dtype=spec.dtype.as_numpy_dtype)[None]
            for n, s, spec in zip(nm.input_names, sample, nm.inputs)
        }


def converted(nm: NativeModel, fmt: str, representative) -> tuple[bytes, bytes]:
    """`(file in the format, float file)` of a Keras 3 model, from one SavedModel.

    Args:
        nm: From `prepare`.
        fmt: `"float"`, `"int8"`, `"int4"` or `"full_int8"`.
        representative: For `full_int8`: an iterable of samples, each a tuple
            of one array per flat input (no batch dimension).
    """
    with tempfile.TemporaryDirectory(prefix="tflite_export_k3_") as directory:
        _saved_model(nm, directory)
        float_bytes = _float(directory, nm)
        if fmt == "float":
            return float_bytes, float_bytes
        if fmt == "full_int8":
            return _full_int8(directory, nm, representative), float_bytes
    bits = 8 if fmt == "int8" else 4
    return convert.weight_only_tflite(float_bytes, bits), float_bytes


@convert.returns_freed_memory
def _float(directory: str, nm: NativeModel) -> bytes:
    conv = _converter(directory)
    with convert.quiet():
        return convert.in_keras_order(bytes(conv.convert()), nm)


@convert.returns_freed_memory
def _full_int8(directory: str, nm: NativeModel, representative) -> bytes:
    conv = _converter(directory)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: _samples(nm, representative)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    convert.quantized_deterministically(conv)
    with convert.quiet():
        return convert.in_keras_order(bytes(conv.convert()), nm)


def check_gather_tables(cws) -> None:
    """Refuses `full_int8` for an Embedding table trained to a codebook or 8
    bits (as `sequence.check_gather_tables` does on the tf_keras route)."""
    for cw in cws:
        if cw.layer_class.endswith("Embedding"):
            raise ExportError(
                f"Layer {cw.layer!r} ({cw.layer_class}) cannot be exported: format='full_int8' "
                "stores its table for the GATHER operator as int8 with one step for the whole "
                "table, the calibrated range of the looked-up values; a table trained with a "
                "scale per row is not exact there. Export format='int8' or 'int4', or keep the "
                "Embedding out of the codebook mapping."
            )
