import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import settings

import tfmot_discrete as td

# Scripts the tests run in child processes (one Keras backend each), not test
# modules: `--doctest-modules` must not import them.
collect_ignore = [
    "keras3_worker.py",
    "keras3_cases.py",
    "keras3_layers_worker.py",
    "keras3_tools_worker.py",
    "keras3_anymodel_worker.py",
    "keras3_distributed_worker.py",
    "keras3_models.py",
    "keras3_native_worker.py",
    "keras3_learned_worker.py",
]

# Property tests draw the same examples on every run and machine: a CI run never
# depends on luck. Set HYPOTHESIS_PROFILE=explore locally to draw new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One table of quantizers feeds the shared tests.
QUANTIZERS = {
    "binary": td.binary(),
    "binary_mean_abs": td.binary(scale="mean_abs"),
    "binary_learned": td.binary(scale="learned"),
    "binary_ste": td.binary(gradient="ste"),
    "binary_stochastic": td.binary(stochastic=True),
    "ternary_mean_abs": td.ternary(),
    "ternary_none": td.ternary(scale=None),
    "ternary_learned_values": td.ternary(learn_values=True),
    "four_values": td.CodebookQuantizer([1, -1, 0.5, -0.5]),
    "four_values_learned": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="learned"),
    "power_of_two_3": td.power_of_two(bits=3),
    "k16_uniform": td.CodebookQuantizer(np.linspace(-1, 1, 16)),
}


@pytest.fixture(params=sorted(QUANTIZERS), ids=sorted(QUANTIZERS))
def quantizer(request):
    return QUANTIZERS[request.param]


@pytest.fixture(autouse=True)
def _seed():
    td.keras.utils.set_random_seed(1234)
    yield
    td.keras.backend.clear_session()


#: The longest test files (a minute or more each on 2 cores) run first, so that
#: the two pytest-xdist workers (one file each at a time) finish together.
SLOW_FILES = (
    "test_benchmarks.py",
    "test_cli_robustness.py",
    "test_distributed.py",
    "test_examples.py",
    "test_export.py",
    "test_keras3.py",
    "test_keras3_anymodel.py",
    "test_keras3_layers.py",
    "test_keras3_native_export.py",
    "test_keras3_tools.py",
    "test_summary_demo_api.py",
    "test_xla.py",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)  # stable: order kept


def run_cli(*args, timeout=300):
    """`python -m tflite_export ARGS` in a subprocess, with TensorFlow's log
    level left at its default (the command must keep its own output quiet)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "tflite_export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
