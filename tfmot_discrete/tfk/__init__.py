"""The TF-MOT plugin on tf_keras models: the only subpackage that imports TF-MOT and tf_keras."""
