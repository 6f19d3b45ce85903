"""Saving and loading Keras 3 QAT models of any class.

A Sequential or Functional QAT model whose wrappers are all its own layers
saves them in its config, as any Keras model does. Wrappers below a model's
config (in a user's layer, a subclassed model, a KerasHub backbone) are in
no config Keras saves. Such a QAT model takes a class of its own:
`QuantizedModel` in front of its float class, with the float class's name
and module, so `isinstance` and everything the class does stay as they
were. Keras saves it as `tfmot_discrete>QuantizedModel`: the float model's
config, plus the float class, its build config and the list of wrappers
under one key. `keras.saving.load_model` (after `import tfmot_discrete`)
then calls `QuantizedModel.from_config`, which re-creates and builds the
float model, puts the wrappers back where the list says and returns it;
Keras then reads the weights into it.

Files saved before this class existed list their wrappers in the model's
build config; `load_model` here reads those.
"""

from __future__ import annotations

import json
import zipfile

from tfmot_discrete.keras3 import reach
from tfmot_discrete.keras3._k3 import is_graph_model, keras, register
from tfmot_discrete.keras3.wrapper import quantizer_from, wrap_place

#: The key of a `QuantizedModel`'s config holding what Keras does not save.
KEY = "tfmot_discrete"
#: The key of the build config that listed the wrappers in earlier files.
OLD_KEY = "tfmot_discrete_wrappers"


@register(package="tfmot_discrete")
class QuantizedModel:
    """The part of a QAT model's class that saves wrappers below its config.

    Never a class of its own: `keep_wrappers` puts it in front of a model's
    float class. Saved as `tfmot_discrete>QuantizedModel`.
    """

    def get_config(self):
        base = float_class(self)
        config = float_config(self)
        module = base.__module__
        config[KEY] = {
            "class": {
                "module": None if module == "__main__" else module,
                "class_name": base.__name__,
                "registered_name": keras.saving.get_registered_name(base),
            },
            "build_config": self.get_build_config(),
            "wrappers": self._tfmot_discrete_wrappers,
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        saved = config.pop(KEY)
        model = keras.saving.deserialize_keras_object(
            {**saved["class"], "config": config, "build_config": saved["build_config"]},
            custom_objects=custom_objects,
        )
        put_wrappers_back(model, saved["wrappers"], f"the saved config of {model.name!r}")
        return model


_CLASSES: dict[type, type] = {}


def keep_wrappers(model, wrappers) -> None:
    """Gives `model` (a QAT model whose tree holds `wrappers`, entries
    `{"place": index into reach.places, "quantizer": config}`, below its
    config) the class that saves them: `QuantizedModel` + its float class."""
    base = float_class(model)
    cls = _CLASSES.get(base)
    if cls is None:

        def get_config(self):
            return QuantizedModel.get_config(self)

        # Keras generates the config of a class that defines no `get_config`
        # (from its `__init__` arguments); it tells such a class by this mark
        # on the method, which the new class must show as the float one does.
        get_config._is_default = getattr(base.get_config, "_is_default", False)  # noqa: SLF001
        cls = type(
            base.__name__,
            (QuantizedModel, base),
            {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                "get_config": get_config,
            },
        )
        register(package="tfmot_discrete", name="QuantizedModel")(cls)
        _CLASSES[base] = cls
    object.__setattr__(model, "_tfmot_discrete_wrappers", list(wrappers))
    model.__class__ = cls


def float_class(model) -> type:
    """The class of `model` without `QuantizedModel`."""
    cls = type(model)
    return cls.__bases__[1] if issubclass(cls, QuantizedModel) else cls


def float_config(model) -> dict:
    """`model.get_config()` as its float class gives it."""
    return float_class(model).get_config(model)


def put_wrappers_back(model, wrappers, source) -> None:
    """Wraps the layers of `model`'s tree that `wrappers` lists (as
    `keep_wrappers` takes it) and gives `model` the class that saves them.

    Raises:
        ValueError: When the tree has fewer layers than a listed place.
    """
    places = reach.places(model, is_graph_model(model))
    for entry in wrappers:
        index = entry["place"]
        if index >= len(places):
            raise ValueError(
                f"{source}: model {model.name!r} has {len(places)} layers in its tree where "
                f"the file records a wrapper at place {index}; its class builds other layers "
                "than when it was saved."
            )
        wrap_place(places[index], quantizer_from(entry["quantizer"]), initialize=False)
    keep_wrappers(model, wrappers)
    # (A subclassed model is built by a symbolic run, which makes its
    # layers' weights but leaves its own flag down.)
    model.built = model.built or bool(model.weights)


def _old_record(path):
    """The saved model config and the list of wrappers in its build config
    (None for a file `keras.saving.load_model` reads)."""
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
    return config, (config.get("build_config") or {}).pop(OLD_KEY, None)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file of a Keras 3 model, QAT wrappers included.

    `keras.saving.load_model` reads every QAT model this release saves, after
    `import tfmot_discrete`. This function also reads the files of earlier
    releases whose wrappers sat below the model's config (in a user's or a
    KerasHub layer, or a subclassed model): it re-creates the float model
    from its config (its class registered with
    `keras.saving.register_keras_serializable`, or given in
    `custom_objects`), puts the wrappers back where the file lists them, and
    reads the weights.

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
        qat = keras.saving.load_model("model.keras")  # or td.keras3.load_model
    """
    config, record = _old_record(filepath)
    if not record:
        return keras.saving.load_model(
            filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    if not compile:
        config.pop("compile_config", None)
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
    put_wrappers_back(model, record, repr(str(filepath)))
    model.load_weights(filepath)
    return model
