"""Keras 3 models with recurrent, Bidirectional, attention, EinsumDense,
TimeDistributed and ConvLSTM layers and a model used as a layer: on the
codebook on the TensorFlow, JAX and PyTorch backends (each in its own process,
run side by side), as on the tf_keras path; exported exactly."""

import pathlib

import pytest
from keras3_cases import passed_checks, run_workers

WORKER = pathlib.Path(__file__).with_name("keras3_layers_worker.py")
#: Each backend's worker flags: the summary (a tf_keras rebuild of the whole
#: layer model) on PyTorch, the export on TensorFlow, so that the three
#: processes take about as long.
BACKENDS = {"tensorflow": ["--export"], "torch": ["--summary"], "jax": []}
CHECKS = {
    "float_notice_and_strict",
    "layer_types_wrap",
    "layer_types_train_strip_save",
    "parity_with_tf_keras",
}
#: Checks that run on some backends only.
BACKEND_CHECKS = {
    "tensorflow": {"masks_reach_wrapped_layers"},
    "torch": {"masks_reach_wrapped_layers"},
}
FLAG_CHECKS = {"--summary": "summary", "--export": "export_gru_attention_int8_int4_exact"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The three backends' workers, run side by side: `{backend: (rc, stderr, dir)}`."""
    return run_workers(WORKER, BACKENDS, tmp_path_factory)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_layer_types_train_strip_save_and_match_tf_keras_on_backend(workers, backend):
    want = CHECKS | BACKEND_CHECKS.get(backend, set()) | {FLAG_CHECKS[f] for f in BACKENDS[backend]}
    assert passed_checks(workers, backend) == want
