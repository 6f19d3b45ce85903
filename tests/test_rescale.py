"""`scale=None` from trained weights: channels rescaled into the codebook
where a BatchNormalization follows, the function unchanged."""

import numpy as np

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import rescale, scheme
from tfmot_discrete.tfk.weights import wrapper_weights
from tfmot_discrete.tools.summary import weight_reports

L = keras.layers
FOUR = td.CodebookQuantizer([1, -1, 0.5, -0.5])


def _trained_like():
    """A float model with small weights (|w| ~ 0.05) and non-trivial BatchNorm
    statistics, as training leaves them."""
    inp = keras.Input((8, 8, 2))
    x = L.Conv2D(6, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    x = L.Dense(16, use_bias=False, name="dense")(x)
    x = L.BatchNormalization(name="bn_dense")(x)
    x = L.ReLU()(x)
    model = keras.Model(inp, L.Dense(4, name="logits")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        for w in layer.weights:
            shape = tuple(w.shape)
            if "kernel" in w.name:
                v = rng.normal(0, 0.05, shape) * rng.uniform(0.5, 2.0, shape[-1])
            elif "moving_variance" in w.name:
                v = rng.uniform(0.01, 0.2, shape)
            elif "gamma" in w.name:
                v = rng.uniform(0.5, 2.0, shape)
            else:  # bias, beta, moving_mean
                v = rng.normal(0, 0.1, shape)
            w.assign(v.astype("float32"))
    return model


def _data(n=64):
    return np.random.default_rng(1).normal(size=(n, 8, 8, 2)).astype("float32")


def _latent(qat, name):
    wrapper = next(
        layer
        for layer in qat.layers
        if getattr(layer, "layer", None) is not None and layer.layer.name == name
    )
    return wrapper_weights(wrapper)[0][0].numpy()


def test_rescaled_float_model_computes_the_same_function():
    model = _trained_like()
    x = _data()
    before = model(x, training=False).numpy()
    weights = [w.copy() for w in model.get_weights()]
    spec = scheme.resolve_quantizer_spec(FOUR)
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    done = rescale.rescale_for_codebook(copy, spec)
    assert [(d.layer, d.normalization) for d in done] == [
        ("conv", "bn"),
        ("dw", "bn_dw"),
        ("dense", "bn_dense"),
    ]
    after = copy(x, training=False).numpy()
    np.testing.assert_allclose(after, before, atol=1e-4 * np.abs(before).max())
    # Each channel's mean |w| is now the codebook's mean |value|, 0.75.
    for name, axes in (("conv", (0, 1, 2)), ("dw", (0, 1)), ("dense", (0,))):
        k = copy.get_layer(name).weights[0].numpy()
        np.testing.assert_allclose(np.abs(k).mean(axis=axes), 0.75, rtol=1e-5)
    # No normalization after the logits layer: left as it was.
    np.testing.assert_array_equal(
        copy.get_layer("logits").kernel.numpy(), model.get_layer("logits").kernel.numpy()
    )
    # quantize_model does the same on a copy; the caller's model is unchanged.
    qat = td.quantize_model(model, FOUR)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    for name in ("conv", "dw", "dense", "logits"):
        np.testing.assert_allclose(
            _latent(qat, name), copy.get_layer(name).weights[0].numpy(), rtol=1e-6
        )


def test_every_codebook_value_is_used_after_a_short_fine_tune():
    model = _trained_like()
    x = _data()
    y = np.random.default_rng(2).integers(0, 4, len(x))
    qat = td.quantize_model(model, FOUR)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    td.summary(qat)
    usage = {r.layer: dict(zip(r.codebook.tolist(), r.usage)) for r in weight_reports(qat)}
    for name in ("conv", "dw", "dense"):
        assert all(u > 0.02 for u in usage[name].values()), (name, usage[name])
    # Without a normalization after it, the logits layer projects as before:
    # its small weights all take ±0.5 (use scale="mean_abs" there).
    assert usage["logits"][1.0] == 0 and usage["logits"][-1.0] == 0


def test_weights_already_on_the_codebook_and_scaled_quantizers_are_left_alone():
    model = _trained_like()
    rng = np.random.default_rng(3)
    conv = model.get_layer("conv")
    conv.kernel.assign(rng.choice([1, -1, 0.5, -0.5], size=conv.kernel.shape).astype("float32"))
    qat = td.quantize_model(model, {"conv": FOUR, "dw|dense": td.binary(scale="mean_abs")})
    np.testing.assert_array_equal(_latent(qat, "conv"), conv.kernel.numpy())
    np.testing.assert_array_equal(
        _latent(qat, "dw"), model.get_layer("dw").depthwise_kernel.numpy()
    )
    np.testing.assert_array_equal(_latent(qat, "dense"), model.get_layer("dense").kernel.numpy())


def test_a_model_quantized_before_is_rescaled_all_the_same():
    # quantize_model builds other models on the float model's layers, which keep
    # those models' nodes: the BatchNormalization after a layer is still found.
    model = _trained_like()
    spec = scheme.resolve_quantizer_spec(FOUR)
    first = [layer.name for layer, _, _ in rescale.plan(model, spec)]
    td.quantize_model(model, td.binary(scale="mean_abs"))
    assert [layer.name for layer, _, _ in rescale.plan(model, spec)] == first
    assert first == ["conv", "dw", "dense"]
    usage = {
        r.layer: r.usage
        for r in weight_reports(td.quantize_model(model, FOUR))
        if r.layer == "dense"
    }
    assert np.all(usage["dense"] > 0.1), usage
