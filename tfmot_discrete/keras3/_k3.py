"""The one module of `tfmot_discrete.keras3` that imports Keras 3.

Keras 3 is `import keras` (and `tf.keras` since TensorFlow 2.16); its backend
(`KERAS_BACKEND`: tensorflow, jax or torch) is chosen before it is first
imported. Every other module of this subpackage takes `keras` from here and
computes with `keras.ops`, so that it runs on every backend.
"""

from __future__ import annotations

import keras

register = keras.saving.register_keras_serializable
ops = keras.ops


def backend() -> str:
    """The Keras 3 backend of this process: `"tensorflow"`, `"jax"` or `"torch"`."""
    return keras.backend.backend()


def is_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_graph_model(model) -> bool:
    """A Sequential or Functional Keras 3 model (rebuildable from its config)."""
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"
