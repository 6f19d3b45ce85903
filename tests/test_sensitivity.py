"""`sensitivity`: per-layer change when only that layer is quantized, against a
manual evaluation of the same models."""

import numpy as np
import pytest
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete import keras

L = keras.layers


def _model():
    inp = keras.Input((6, 6, 1))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    x = L.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inp, L.Dense(3, name="logits")(x), name="small")


def _trained():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6, 6, 1)).astype("float32")
    y = (x[:, :3].mean((1, 2, 3)) > 0).astype(int) + (x[:, 3:].mean((1, 2, 3)) > 0.2)
    model = _model()
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    return model, x, y


def _manual(model, q, name, x, recalibrate=None):
    plain = td.strip_quantization(td.quantize_model(model, {name: q}))
    if recalibrate is not None:
        td.recalibrate_batchnorm(plain, recalibrate)
    return plain.predict(x, verbose=0)


def test_numbers_equal_a_manual_evaluation():
    model, x, y = _trained()
    q = td.binary(scale="mean_abs")
    lines = []
    rows = td.sensitivity(model, q, (x, y), print_fn=lines.append)
    assert [r.layer for r in rows] == ["conv", "hidden", "logits"]
    assert [r.weights for r in rows] == [36, 64 * 8, 24]
    float_acc = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    for r in rows:
        acc = float(np.mean(_manual(model, q, r.layer, x).argmax(-1) == y))
        assert (r.baseline, r.quantized) == pytest.approx((float_acc, acc))
        assert r.change == pytest.approx(acc - float_acc)
    assert any(abs(r.change) > 0 for r in rows)
    table = lines[0].splitlines()
    assert table[0].startswith('Sensitivity of "small" to CodebookQuantizer([-1.0, 1.0]')
    assert table[2].split() == ["layer", "class", "weights", "accuracy", "change"]
    assert table[4].split() == [
        "conv",
        "Conv2D",
        "36",
        f"{rows[0].quantized:.4f}",
        f"{rows[0].change:+.4f}",
    ]


def test_loss_metric_dataset_and_recalibration():
    model, x, y = _trained()
    q = td.ternary()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    rows = td.sensitivity(model, q, ds, metric=loss, recalibration_data=x, print_fn=None)
    for r in rows:
        want = float(loss(y, _manual(model, q, r.layer, x, recalibrate=x)))
        assert r.quantized == pytest.approx(want, rel=1e-5)
        assert r.metric == "sparse_categorical_crossentropy"
    compiled = td.sensitivity(model, q, (x, y), metric="loss", print_fn=None)
    assert compiled[2].baseline == pytest.approx(
        float(loss(y, model.predict(x, verbose=0))), rel=1e-5
    )
    int8_rows = td.sensitivity(model, "int8", (x, y), print_fn=None)
    assert all(abs(r.change) <= 0.02 for r in int8_rows)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"data": np.zeros((4, 6, 6, 1))},
            r"must be a tuple \(x, y\).*Received: data of type ndarray",
        ),
        ({"data": (np.zeros((4, 6, 6, 1)), np.zeros(3))}, r"holds 4 inputs but 3 labels"),
        (
            {"metric": "f1"},
            r"`metric` must be one of \['accuracy', 'loss'\].*Received: metric='f1'",
        ),
        ({"quantizer": {"conv": td.binary()}}, r"not a mapping"),
        ({"quantizer": "nine"}, r"Received: identifier='nine'"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {
        "model": _model(),
        "quantizer": td.binary(),
        "data": (np.zeros((4, 6, 6, 1)), np.zeros(4)),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        td.sensitivity(**args)
    with pytest.raises(ValueError, match="not compiled"):
        td.sensitivity(
            _model(),
            td.binary(),
            args["data"] if "data" not in kwargs else (np.zeros((4, 6, 6, 1)), np.zeros(4)),
            metric="loss",
        )
