"""`quantize_model` says which weights will not train, and which `scale=None`
weights start on only some of their codebook's values."""

import warnings

import numpy as np
import pytest

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk.weights import QuantizationWarning, codebook_items

L = keras.layers
FOUR = [1, -1, 0.5, -0.5]


def _mlp(batch_norm=False):
    inp = keras.Input((8,))
    x = L.Dense(16, name="hidden")(inp)
    if batch_norm:
        x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    return keras.Model(inp, L.Dense(4, name="logits")(x))


def _quantize(model, quantizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = td.quantize_model(model, quantizer)
    # Layers the mapping leaves float get their own notice (test_layer_types.py).
    ours = [
        w
        for w in caught
        if issubclass(w.category, QuantizationWarning) and "stay float" not in str(w.message)
    ]
    return qat, [str(w.message) for w in ours], ours


def test_frozen_layers_are_named_once_each_with_what_trains():
    model = _mlp(batch_norm=True)
    for name in ("hidden", "bn"):
        model.get_layer(name).trainable = False
    qat, messages, caught = _quantize(model, td.ternary())
    assert messages == [
        "Layer 'hidden' is set to trainable=False: its quantized weights (kernel) train all "
        "the same (TF-MOT trains every weight it quantizes), its other weights stay frozen. "
        "Set `trainable = True` on it before `quantize_model` to fine-tune all of it.",
        "Layer 'bn' is set to trainable=False: its weights stay frozen. Set `trainable = True` "
        "on it before `quantize_model` to fine-tune all of it.",
    ]
    assert all(w.filename == __file__ for w in caught)
    # What the warning says is what happens.
    trainable = {w.name.split("/")[-1] for w in qat.get_layer("quant_hidden").trainable_weights}
    assert trainable == {"kernel:0"}
    assert qat.get_layer("bn").trainable_weights == []


def test_a_frozen_model_names_every_layer_and_a_trainable_one_nothing():
    model = _mlp()
    model.trainable = False
    _, messages, _ = _quantize(model, {"logits": "int8", ".*": td.ternary()})
    assert [m.split(" is set")[0] for m in messages] == ["Layer 'hidden'", "Layer 'logits'"]
    _, messages, _ = _quantize(_mlp(), td.ternary())
    assert messages == []


def test_scale_none_weights_on_some_codebook_values_get_a_warning():
    keras.utils.set_random_seed(0)
    model = _mlp()
    # Trained-looking weights: |w| ~ 0.05 all project to +-0.5 of [+-1, +-0.5].
    for name in ("hidden", "logits"):
        kernel = model.get_layer(name).kernel
        kernel.assign(np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype("float32"))
    qat, messages, _ = _quantize(model, {"logits": td.CodebookQuantizer(FOUR), ".*": None})
    assert len(messages) == 1
    assert messages[0].startswith("Layer 'logits', weight 'kernel': with scale=None")
    assert "only 2 of the 4 codebook values" in messages[0] and 'scale="mean_abs"' in messages[0]
    # The warning tells the truth: two values in use.
    (item,) = codebook_items(qat)
    used = np.unique(item.quantizer.codebook.index_numpy(item.latent.numpy()))
    assert used.size == 2


@pytest.mark.parametrize(
    ("batch_norm", "quantizer"),
    [(True, td.CodebookQuantizer(FOUR)), (False, td.CodebookQuantizer(FOUR, scale="mean_abs"))],
    ids=["batchnorm_after", "mean_abs"],
)
def test_no_warning_where_the_weights_are_rescaled_or_scaled(batch_norm, quantizer):
    model = _mlp(batch_norm)
    kernel = model.get_layer("hidden").kernel
    kernel.assign(np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype("float32"))
    _, messages, _ = _quantize(model, {"hidden": quantizer})
    assert messages == []
