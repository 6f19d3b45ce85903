"""Keras 3 models in the export: rebuilt in tf_keras first.

The converters and the checks work on tf_keras models. A Keras 3 model (QAT
from `td.quantize_model`, stripped or float, trained on any backend) becomes
its tf_keras twin with `td.to_tf_keras`; a Keras 3 `.keras` file is loaded
with Keras 3 and converted the same way.
"""

from __future__ import annotations

import json
import sys
import zipfile

import tfmot_discrete as td
from tflite_export.errors import ExportError


def is_keras3_model(obj) -> bool:
    """True for a Keras 3 model (`keras.Model`; a tf_keras model is not one)."""
    keras3 = sys.modules.get("keras")  # not imported: no Keras 3 object exists
    return keras3 is not None and isinstance(obj, keras3.Model)


def as_tf_keras(model):
    """`model` itself, or for a Keras 3 model its tf_keras twin.

    Raises:
        ExportError: When tf_keras cannot rebuild a layer of the model.
    """
    if not is_keras3_model(model):
        return model
    try:
        return td.to_tf_keras(model)
    except ValueError as e:
        raise ExportError(f"Cannot export Keras 3 model {model.name!r}: {e}") from None


def saved_with_keras3(path) -> bool:
    """True when the `.keras` file at `path` was written by Keras 3."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return str(meta.get("keras_version", "")).startswith("3.")


def load(path, safe_mode: bool = True):
    """Loads a Keras 3 `.keras` file (this package's layers registered) and
    returns its tf_keras twin."""
    import keras  # noqa: PLC0415  (Keras 3, only for Keras 3 files)

    import tfmot_discrete.keras3  # noqa: F401, PLC0415  (registers the Keras 3 layers)

    model = keras.saving.load_model(str(path), compile=False, safe_mode=safe_mode)
    return as_tf_keras(model)
