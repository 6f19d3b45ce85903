"""The one module that imports Keras.

TF-MOT 0.8 works on Keras 2 (`tf_keras`). Every other module of the package
takes `keras` from here.
"""

from __future__ import annotations

import tf_keras as keras  # noqa: F401  (re-exported)

register = keras.saving.register_keras_serializable  # noqa: E305


def is_tf_keras_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_keras3_object(obj) -> bool:
    """True if `obj` is a Keras 3 model or layer (what `tf.keras` gives in TF >= 2.16)."""
    mod = type(obj).__module__ or ""
    if mod.startswith("tf_keras"):
        return False
    try:
        import keras as keras3  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, keras3.layers.Layer) and not isinstance(obj, keras.layers.Layer)
