"""The TF-MOT plugin on tf_keras models: the only subpackage that imports TF-MOT and tf_keras.

Its public face for the rest of the package and for users: `keras` (tf_keras),
`is_keras3_object`, `from_keras3` and `register` (tf_keras's
`register_keras_serializable`).
"""

from tfmot_discrete.tfk._keras import from_keras3, is_keras3_object, keras, register

__all__ = ["from_keras3", "is_keras3_object", "keras", "register"]
