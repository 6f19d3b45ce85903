"""tfmot-discrete: train Keras weights to a codebook through TF-MOT."""

from tfmot_discrete import quantizers
from tfmot_discrete._keras import keras
from tfmot_discrete.api import quantize_model, strip_quantization, summary, to_tf_keras
from tfmot_discrete.batchnorm import RecalibrateBatchNorm, recalibrate_batchnorm
from tfmot_discrete.codebook import Codebook
from tfmot_discrete.configs import DiscreteQuantizeConfig
from tfmot_discrete.distill import Distiller
from tfmot_discrete.layers import DiscreteMultiplier
from tfmot_discrete.monitor import CodebookMonitor
from tfmot_discrete.plan import plan
from tfmot_discrete.plotting import plot_weights
from tfmot_discrete.quantize import initialize_learned_scales, quantize_scope
from tfmot_discrete.quantizers import CodebookQuantizer, binary, power_of_two, ternary
from tfmot_discrete.schedule import finetune_schedule
from tfmot_discrete.scheme import DiscreteQuantizeRegistry, DiscreteQuantizeScheme
from tfmot_discrete.sensitivity import sensitivity

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
