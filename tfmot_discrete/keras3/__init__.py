"""Codebook training on Keras 3 models, on the TensorFlow, JAX and PyTorch backends.

`td.quantize_model`, `td.strip_quantization`, `td.recalibrate_batchnorm` and
`td.summary` take Keras 3 models and dispatch here; `td.to_tf_keras` rebuilds
one in tf_keras (for TF-MOT and the TFLite export). Nothing here imports
TensorFlow, tf_keras or TF-MOT. The layers are Keras 3 serializables
(`tfmot_discrete>QuantizeWrapper`, `tfmot_discrete>DiscreteMultiplier`): a
saved model loads with `keras.saving.load_model` after `import tfmot_discrete`,
also a QAT model with wrappers below its own layers (a user's layer, a
subclassed or KerasHub model), whose class is `QuantizedModel` in front of
its float class (`keras3.saving`).
"""

from tfmot_discrete.keras3._k3 import backend, keras
from tfmot_discrete.keras3.activations import ActivationQuantizer
from tfmot_discrete.keras3.batchnorm import recalibrate_batchnorm
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.quantize import is_quantized, quantize_model, strip_quantization
from tfmot_discrete.keras3.saving import QuantizedModel, load_model
from tfmot_discrete.keras3.wrapper import LAYER_WEIGHTS, QuantizeWrapper, register_weights

__all__ = [
    "ActivationQuantizer",
    "LAYER_WEIGHTS",
    "DiscreteMultiplier",
    "QuantizeWrapper",
    "QuantizedModel",
    "backend",
    "is_quantized",
    "keras",
    "load_model",
    "quantize_model",
    "recalibrate_batchnorm",
    "register_weights",
    "strip_quantization",
]
