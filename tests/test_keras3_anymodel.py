"""Any Keras 3 model class on the codebook: a user's layer of Dense
sub-layers, a subclassed model, a registered custom kernel and KerasHub
models (TensorFlow: encoder, decoder, BERT classifier, GPT-2 backbone; JAX:
the encoder), each quantized with no supported-kind layer left float,
trained, stripped, saved and reloaded, on every backend in a process of its
own (`keras3_anymodel_worker.py`); and the seed's vector in a subclassed
Keras 3 model, learned with `td.keras3.DiscreteMultiplier` and refused with
`td.DiscreteMultiplier`."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from keras3_cases import passed_checks, run_fresh, run_workers

WORKER = pathlib.Path(__file__).with_name("keras3_anymodel_worker.py")
BACKENDS = {"tensorflow": ["--hub-all"], "jax": ["--hub"], "torch": []}
CHECKS = {
    "custom_block_in_functional",
    "subclassed_model",
    "subclassed_model_without_get_config",
    "mapping_keys_match_tree_and_weight_paths",
    "in_place_and_copy_refusal",
    "registered_custom_kernel",
    "seed_vector_in_subclassed_model",
    "toolbox_on_subclassed_model",
}
HUB = {"keras_hub_transformer_encoder"}
HUB_ALL = HUB | {
    "keras_hub_transformer_decoder",
    "keras_hub_bert_classifier_dict_inputs",
    "keras_hub_gpt2_backbone",
}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The three backends' workers, run side by side: `{backend: (rc, stderr, dir)}`."""
    return run_workers(WORKER, BACKENDS, tmp_path_factory)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_any_model_class_quantizes_trains_strips_and_reloads(workers, backend):
    flags = BACKENDS[backend]
    want = CHECKS | (HUB_ALL if "--hub-all" in flags else HUB if "--hub" in flags else set())
    assert passed_checks(workers, backend) == want


FRESH_LOAD = """
import sys
import numpy as np
import keras
import keras_hub
import tfmot_discrete
model = keras.saving.load_model(sys.argv[1])
assert type(model).__name__ == "Functional" and "QuantizedModel" in str(type(model).__mro__)
got = keras.ops.convert_to_numpy(model(np.load(sys.argv[2])))
np.testing.assert_allclose(got, np.load(sys.argv[3]), rtol=1e-5, atol=1e-5)
print("predicts the same")
"""


@pytest.mark.parametrize("saved_on", ["tensorflow", "jax"])
def test_keras_hub_file_loads_in_a_fresh_process_after_import_tfmot_discrete(workers, saved_on):
    """The KerasHub `TransformerEncoder` classifier's QAT file (its wrappers
    inside the encoder, below the model's config), saved on TensorFlow and on
    JAX, loads with `keras.saving.load_model` in a new TensorFlow process that
    imported only Keras, KerasHub and `tfmot_discrete`, and predicts the same."""
    assert "keras_hub_transformer_encoder" in passed_checks(workers, saved_on)
    out = workers[saved_on][2]
    files = [out / "encoder.keras", out / "encoder_x.npy", out / "encoder_out.npy"]
    assert "predicts the same" in run_fresh(FRESH_LOAD, *map(str, files))


def test_data_parallel_on_two_jax_devices_trains_a_quantized_model(tmp_path):
    """`keras.distribution.DataParallel` (two JAX CPU devices): a model with a
    user's block, quantized, trains; its latent weights are replicated."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    root = str(WORKER.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    script = WORKER.with_name("keras3_distributed_worker.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["devices"] == 2 and result["weights"] == 4, result
    assert result["flips"] > 0 and result["replicated"], result
