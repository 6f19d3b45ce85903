"""tfmot-discrete: train Keras weights to a codebook through TF-MOT."""

from tfmot_discrete.api import quantize_model, strip_quantization, summary, to_tf_keras
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk import quantizers
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.batchnorm import RecalibrateBatchNorm, recalibrate_batchnorm
from tfmot_discrete.tfk.configs import DiscreteQuantizeConfig
from tfmot_discrete.tfk.distill import Distiller
from tfmot_discrete.tfk.layers import DiscreteMultiplier
from tfmot_discrete.tfk.quantize import initialize_learned_scales, quantize_scope
from tfmot_discrete.tfk.quantizers import CodebookQuantizer, binary, power_of_two, ternary
from tfmot_discrete.tfk.scheme import DiscreteQuantizeRegistry, DiscreteQuantizeScheme
from tfmot_discrete.tools.monitor import CodebookMonitor
from tfmot_discrete.tools.plan import plan
from tfmot_discrete.tools.plotting import plot_weights
from tfmot_discrete.tools.schedule import finetune_schedule
from tfmot_discrete.tools.sensitivity import sensitivity

__version__ = "0.1.0"


def __getattr__(name):
    # `td.keras3` (the Keras 3 path) imports Keras 3 on first use, not with `td`.
    if name == "keras3":
        import importlib  # noqa: PLC0415

        return importlib.import_module("tfmot_discrete.keras3")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
