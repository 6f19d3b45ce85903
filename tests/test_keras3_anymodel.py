"""Any Keras 3 model class on the codebook: a user's layer of Dense
sub-layers, a subclassed model, a registered custom kernel and KerasHub
models (TensorFlow: encoder, decoder, BERT classifier, GPT-2 backbone; JAX:
the encoder), each quantized with no supported-kind layer left float,
trained, stripped, saved and reloaded, on every backend in a process of its
own (`keras3_anymodel_worker.py`); and the seed's vector in a subclassed
Keras 3 model, learned with `td.keras3.DiscreteMultiplier` and refused with
`td.DiscreteMultiplier`."""

import pathlib

import pytest
from keras3_cases import passed_checks, run_workers

WORKER = pathlib.Path(__file__).with_name("keras3_anymodel_worker.py")
BACKENDS = {"tensorflow": ["--hub-all"], "jax": ["--hub"], "torch": []}
CHECKS = {
    "custom_block_in_functional",
    "subclassed_model",
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
