"""Signature parity with the TF-MOT interfaces we implement."""

import inspect

import pytest
import tensorflow_model_optimization as tfmot

import tfmot_discrete as td
from tfmot_discrete.tfk import int8

_qk = tfmot.quantization.keras

PAIRS = [
    (td.CodebookQuantizer, _qk.quantizers.Quantizer, ["build", "__call__", "get_config"]),
    (int8.Int8WeightQuantizer, _qk.quantizers.Quantizer, ["build", "__call__", "get_config"]),
    (
        td.DiscreteQuantizeConfig,
        _qk.QuantizeConfig,
        [
            "get_weights_and_quantizers",
            "get_activations_and_quantizers",
            "set_quantize_weights",
            "set_quantize_activations",
            "get_output_quantizers",
            "get_config",
        ],
    ),
    (td.DiscreteQuantizeRegistry, _qk.QuantizeRegistry, ["get_quantize_config"]),
    (
        td.DiscreteQuantizeScheme,
        _qk.QuantizeScheme,
        ["get_layout_transformer", "get_quantize_registry"],
    ),
]


@pytest.mark.parametrize("ours, theirs, methods", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_methods_match_tfmot_signatures(ours, theirs, methods):
    assert issubclass(ours, theirs)
    for name in methods:
        mine = inspect.signature(getattr(ours, name))
        base = inspect.signature(getattr(theirs, name))
        assert list(mine.parameters) == list(base.parameters), name


def test_get_config_returns_exactly_the_init_arguments():
    for cls, obj in [
        (td.CodebookQuantizer, td.CodebookQuantizer([1, -1, 0.5], scale="learned")),
        (td.DiscreteQuantizeConfig, td.DiscreteQuantizeConfig({"kernel": td.binary()})),
        (int8.Int8WeightQuantizer, int8.Int8WeightQuantizer(per_axis=False)),
    ]:
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(obj.get_config()) == params
