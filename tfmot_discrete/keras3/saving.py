"""`load_model`: a `.keras` file of a Keras 3 QAT model of any class, loaded.

A Sequential or Functional QAT model whose wrappers are all its own layers
saves them in its config: `keras.saving.load_model` reloads it. Wrappers
below a model's config (in a user's layer, a subclassed model, a KerasHub
backbone) are not in any config Keras saves: `quantize_model` lists them in
the model's build config instead, and `load_model` re-creates the float
model from its config, puts the wrappers back where the list says, and then
reads the weights.
"""

from __future__ import annotations

import json
import zipfile

from tfmot_discrete.keras3 import quantize as k3
from tfmot_discrete.keras3 import reach
from tfmot_discrete.keras3._k3 import add_to_build_config, is_graph_model, keras
from tfmot_discrete.keras3.wrapper import quantizer_from


def _record(path):
    """The saved model config and its list of wrappers (None for a file
    `keras.saving.load_model` reloads as it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(
            f"`filepath` must be a `.keras` file saved by Keras 3 ({type(e).__name__}: {e}). "
            f"Received: filepath={str(path)!r}"
        ) from e
    # Taken out of the build config that Keras builds the model from (Keras
    # keeps that config whole, and would read the record as an input shape).
    return config, (config.get("build_config") or {}).pop(k3.RECORD_KEY, None)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file of a Keras 3 model, QAT wrappers included.

    For files whose wrappers are all in the model's config (Sequential and
    Functional QAT models of built-in layers) this is
    `keras.saving.load_model`. Otherwise the model is re-created from its
    config (its class must be registered with
    `keras.saving.register_keras_serializable`, or given in
    `custom_objects`), the wrappers recorded at `quantize_model` are put back
    in its layer tree, and the weights are read into it.

    Args:
        filepath: Path of a `.keras` file.
        custom_objects: Passed to Keras's deserialization. Defaults to `None`.
        compile: Compile the model as it was saved. Defaults to `True`.
        safe_mode: Keras's safe mode: refuse to deserialize `lambda`s.
            Defaults to `True`.

    Returns:
        The Keras 3 model, of the class that was saved.

    Raises:
        ValueError: For a file that is not a `.keras` archive, or a model
            whose layer tree no longer matches the record.

    Example (`qat` a QAT model with wrappers inside its own layers; tested in
    `tests/test_keras3_anymodel.py`):

        qat.save("model.keras")
        qat = td.keras3.load_model("model.keras")
    """
    config, record = _record(filepath)
    if not record:
        return keras.saving.load_model(
            filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    if not compile:
        config.pop("compile_config", None)
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
    graph = is_graph_model(model)
    places = reach.places(model, graph)
    for entry in record:
        index = entry["place"]
        if index >= len(places):
            raise ValueError(
                f"{str(filepath)!r}: the saved model {model.name!r} has {len(places)} layers in "
                f"its tree where the file records a wrapper at place {index}; its class builds "
                "other layers than when it was saved."
            )
        k3.wrap_place(places[index], quantizer_from(entry["quantizer"]), initialize=False)
    add_to_build_config(model, k3.RECORD_KEY, record)
    model.built = model.built or bool(model.weights)  # (as in `quantize.copy_model`)
    model.load_weights(filepath)
    return model
