"""tfmot-discrete: train Keras weights to a codebook through TF-MOT.

`import tfmot_discrete` is light: the codebook, the quantizers and the
dispatching entry points load with it (NumPy only). TensorFlow, tf_keras and
TF-MOT load when a tf_keras model or a TF-MOT name (`td.keras`,
`td.quantize_scope`, `td.DiscreteQuantizeScheme`, ...) is first used; the
Keras 3 path when a Keras 3 model is. Keras 3's `.keras` files of QAT models
load with `keras.saving.load_model` once Keras 3 is imported (before or after
this package).
"""

import importlib

from tfmot_discrete import _hooks
from tfmot_discrete.api import (
    Distiller,
    quantize_model,
    recalibrate_batchnorm,
    strip_quantization,
    summary,
    to_tf_keras,
)
from tfmot_discrete.core import quantizers as _core_quantizers
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.core.quantizers import CodebookQuantizer, binary, power_of_two, ternary

__version__ = "0.1.0"

#: Public names loaded on first use: name -> (module, attribute or None for
#: the module itself). The tf_keras ones import TensorFlow, tf_keras and TF-MOT.
_LAZY = {
    "CodebookMonitor": ("tfmot_discrete.tools.monitor", "CodebookMonitor"),
    "DiscreteMultiplier": ("tfmot_discrete.tfk.layers", "DiscreteMultiplier"),
    "DiscreteQuantizeConfig": ("tfmot_discrete.tfk.configs", "DiscreteQuantizeConfig"),
    "DiscreteQuantizeRegistry": ("tfmot_discrete.tfk.scheme", "DiscreteQuantizeRegistry"),
    "DiscreteQuantizeScheme": ("tfmot_discrete.tfk.scheme", "DiscreteQuantizeScheme"),
    "RecalibrateBatchNorm": ("tfmot_discrete.tools.callbacks", "RecalibrateBatchNorm"),
    "finetune_schedule": ("tfmot_discrete.tools.schedule", "finetune_schedule"),
    "initialize_learned_scales": ("tfmot_discrete.tfk.quantize", "initialize_learned_scales"),
    "keras": ("tfmot_discrete.tfk", "keras"),
    "keras3": ("tfmot_discrete.keras3", None),
    "plan": ("tfmot_discrete.tools.plan", "plan"),
    "plot_weights": ("tfmot_discrete.tools.plotting", "plot_weights"),
    "quantize_scope": ("tfmot_discrete.tfk.quantize", "quantize_scope"),
    "quantizers": ("tfmot_discrete.tfk.quantizers", None),
    "sensitivity": ("tfmot_discrete.tools.sensitivity", "sensitivity"),
}


def _load_tf_behaviour():
    # The TF-MOT side of the core's quantizer classes (`build`, `__call__`),
    # which registers them as TF-MOT `Quantizer`s.
    importlib.import_module("tfmot_discrete.tfk.quantizers")
    importlib.import_module("tfmot_discrete.tfk.int8")


#: The Keras 3 path's serializable layers.
_KERAS3_SERIALIZABLES = (
    "QuantizeWrapper",
    "DiscreteMultiplier",
    "ActivationQuantizer",
    "QuantizedModel",
)


def _deferred_keras3_class(name):
    """A stand-in registered under `tfmot_discrete>name` with Keras 3: it
    imports the Keras 3 path (whose class then takes the name over) the first
    time Keras deserializes one."""

    def from_config(cls, config):
        real = getattr(importlib.import_module("tfmot_discrete.keras3"), name)
        return real.from_config(config)

    def get_config(self):  # (Keras registers classes that have one)
        raise NotImplementedError(f"{name} stands in for tfmot_discrete.keras3.{name}")

    return type(name, (), {"from_config": classmethod(from_config), "get_config": get_config})


def _register_keras3():
    # Without importing the Keras 3 path (and with it Keras 3's backend work).
    import keras  # noqa: PLC0415  (already imported: this runs right after it)

    registered = keras.saving.get_custom_objects()
    for name in _KERAS3_SERIALIZABLES:
        if f"tfmot_discrete>{name}" not in registered:
            keras.saving.register_keras_serializable("tfmot_discrete", name)(
                _deferred_keras3_class(name)
            )


_core_quantizers.set_behaviour_loader(_load_tf_behaviour)
_hooks.after_import("tensorflow_model_optimization", _load_tf_behaviour)
_hooks.after_import("keras", _register_keras3)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Codebook",
    "CodebookMonitor",
    "CodebookQuantizer",
    "DiscreteMultiplier",
    "DiscreteQuantizeConfig",
    "DiscreteQuantizeRegistry",
    "DiscreteQuantizeScheme",
    "Distiller",
    "RecalibrateBatchNorm",
    "binary",
    "finetune_schedule",
    "initialize_learned_scales",
    "keras",
    "plan",
    "plot_weights",
    "power_of_two",
    "quantize_model",
    "quantize_scope",
    "quantizers",
    "recalibrate_batchnorm",
    "sensitivity",
    "strip_quantization",
    "summary",
    "ternary",
    "to_tf_keras",
]
