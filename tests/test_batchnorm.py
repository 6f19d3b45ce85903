"""`recalibrate_batchnorm` and the `RecalibrateBatchNorm` callback."""

import numpy as np
import pytest
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk.batchnorm import batchnorm_layers

L = keras.layers


def _model():
    inp = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(3, 3, name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.5)(x)
    return keras.Model(inp, L.Dense(5, name="head")(x), name="bnnet")


def _data(n=48):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(n, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 5, size=n)
    return x, y


def _bn(model, name):
    return [b for b in batchnorm_layers(model) if b.name == name][0]


def _spoil(model):
    for bn in batchnorm_layers(model):
        bn.moving_mean.assign(bn.moving_mean + 3.0)
        bn.moving_variance.assign(bn.moving_variance * 7.0)


def _without_dropout(model):
    """The same layers and weights minus the Dropout before the head, so that
    training-mode outputs are deterministic."""
    flat = model.get_layer(index=-3).output
    return keras.Model(model.input, model.layers[-1](flat))


@pytest.mark.parametrize("stripped", [False, True])
def test_eval_outputs_match_batch_statistics_of_projected_model(stripped):
    x, _ = _data()
    qat = td.quantize_model(_model(), td.ternary())
    model = td.strip_quantization(qat) if stripped else qat
    _spoil(model)
    trainable = [w.numpy().copy() for w in model.trainable_weights]
    # What the projected model computes with batch statistics (one batch =
    # all data), on a stripped copy: training=True updates only its statistics.
    stats_out = _without_dropout(td.strip_quantization(qat))(x, training=True).numpy()
    spoiled_out = _without_dropout(td.strip_quantization(qat))(x, training=False).numpy()
    assert np.abs(spoiled_out - stats_out).max() > 0.1
    assert td.recalibrate_batchnorm(model, x, batch_size=len(x)) == 1
    check = td.strip_quantization(model) if not stripped else model
    eval_out = _without_dropout(check)(x, training=False).numpy()
    np.testing.assert_allclose(eval_out, stats_out, atol=2e-4)
    for w, before in zip(model.trainable_weights, trainable):
        np.testing.assert_array_equal(w.numpy(), before)


def test_only_the_moving_statistics_change():
    x, y = _data()
    qat = td.quantize_model(_model(), td.ternary(), activations="int8")
    qat.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    _spoil(qat)
    before = {id(w): w.numpy().copy() for w in qat.weights}
    moving = {id(v) for bn in batchnorm_layers(qat) for v in (bn.moving_mean, bn.moving_variance)}
    td.recalibrate_batchnorm(qat, x, batch_size=16)
    assert len(moving) == 4
    for w in qat.weights:
        if id(w) in moving:
            assert np.abs(w.numpy() - before[id(w)]).max() > 0.1, w.name
        else:
            np.testing.assert_array_equal(w.numpy(), before[id(w)], err_msg=w.name)


def test_statistics_are_the_mean_and_variance_over_all_samples():
    x, _ = _data()
    model = td.strip_quantization(td.quantize_model(_model(), td.binary(scale="mean_abs")))
    _spoil(model)
    assert td.recalibrate_batchnorm(model, x, batch_size=10) == 5
    conv = keras.Model(model.input, model.get_layer("conv").output)(x).numpy()
    conv = conv.reshape(-1, conv.shape[-1]).astype(np.float64)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(0), rtol=1e-4)


def test_every_data_form_gives_the_same_statistics():
    x, y = _data()
    model = _model()
    results = []
    forms = [
        x,
        (x, y),
        (x, y, np.ones(len(x))),
        tf.data.Dataset.from_tensor_slices(x).batch(16),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        tf.data.Dataset.from_tensor_slices((x, y)),  # unbatched: batched here
    ]
    for data in forms:
        _spoil(model)
        assert td.recalibrate_batchnorm(model, data, batch_size=16) == 3
        results.append(
            [
                v.numpy().copy()
                for bn in batchnorm_layers(model)
                for v in (bn.moving_mean, bn.moving_variance)
            ]
        )
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_steps_limits_the_batches():
    x, _ = _data()
    model = _model()
    assert td.recalibrate_batchnorm(model, x, steps=2, batch_size=8) == 2
    conv = keras.Model(model.input, model.get_layer("conv").output)(x[:16]).numpy()
    np.testing.assert_allclose(
        model.get_layer("bn").moving_mean.numpy(), conv.reshape(-1, 4).mean(0), atol=1e-5
    )
    infinite = tf.data.Dataset.from_tensor_slices(x).batch(8).repeat()
    assert td.recalibrate_batchnorm(model, infinite, steps=3) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"`steps` must be None or an int >= 1. Received: steps=0"),
        ({"steps": 1.5}, r"Received: steps=1.5"),
        ({"batch_size": 0}, r"`batch_size` must be an int >= 1. Received: batch_size=0"),
        ({"data": "images"}, r"must hold numeric arrays.*Received: data of type str"),
        ({"data": np.zeros((4, 8, 8, 3), "float32")}, r"Received: a batch of shape \(4, 8, 8, 3\)"),
        ({"data": np.zeros((0, 8, 8, 2), "float32")}, r"holds no samples"),
        ({"data": (1, 2, 3, 4)}, r"tuple of 4 items"),
        (
            {"data": tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 2))).repeat()},
            r"infinite dataset: pass `steps`",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    model = _model()
    args = {"data": _data(8)[0], **kwargs}
    with pytest.raises(ValueError, match=match):
        td.recalibrate_batchnorm(model, **args)
    with pytest.raises(ValueError, match="`model` must be a tf_keras model"):
        td.recalibrate_batchnorm("model", _data(8)[0])


def test_callback_recalibrates_at_the_end_of_fit():
    x, y = _data()
    qat = td.quantize_model(_model(), td.ternary())
    qat.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(
        x,
        y,
        epochs=1,
        batch_size=16,
        verbose=0,
        callbacks=[td.RecalibrateBatchNorm(x, batch_size=len(x))],
    )
    plain = td.strip_quantization(qat)
    conv = keras.Model(plain.input, plain.get_layer("conv").output)(x).numpy().reshape(-1, 4)
    bn = _bn(qat, "bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(0), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="Received: steps=-1"):
        td.RecalibrateBatchNorm(x, steps=-1)
