"""Learned codebook values (`learn_values=True`) on the tf_keras path: they
train, stay sorted, distinct and on their int8 grid, and the stripped weights
and every exported file hold exactly them (Keras 3: test_keras3_learned_values.py)."""

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.core import learned, text
from tfmot_discrete.tfk import ops

L = keras.layers


def _on_grid(values) -> bool:
    v = np.asarray(values, np.float32)
    codes = v / learned.grid_step(v)
    return bool(np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127)


def test_projection_sorts_spaces_and_grids_the_values_the_same_in_numpy_and_tensorflow():
    rng = np.random.default_rng(0)
    for _ in range(100):
        k = int(rng.integers(2, 12))
        v = (rng.normal(size=k) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
        v[1] = v[0]  # two equal values must come out distinct
        for snap in (True, False):
            got = learned.project_values(v, snap)
            np.testing.assert_array_equal(ops.project_values(tf.constant(v), snap).numpy(), got)
            assert np.all(np.diff(got) >= learned.grid_step(got) * (1 - 1e-6))
        snapped = learned.project_values(v)
        assert _on_grid(snapped)
        np.testing.assert_array_equal(learned.project_values(snapped), snapped)  # idempotent
    # Powers of two keep their values exactly; others go to the nearest grid point.
    np.testing.assert_array_equal(td.power_of_two(3).initial_values(), td.power_of_two(3).values)
    assert td.CodebookQuantizer([0.3, 1.0], learn_values=True).initial_values().tolist() == [
        0.296875,
        1.0,
    ]


@pytest.mark.parametrize("k", [3, 16])  # the select chain and the sorted search
def test_value_gradient_is_the_sum_of_the_upstream_gradient_over_assigned_entries(k):
    rng = np.random.default_rng(1)
    x = tf.Variable(rng.uniform(-1.2, 1.2, size=(40, 4)).astype(np.float32))
    v = tf.Variable(learned.project_values(np.linspace(-1, 1, k)))
    s = tf.constant([[0.5, 1.0, 2.0, 1.5]])
    up = rng.normal(size=(40, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        y = ops.project_learned(x, v, -1.0, 1.0, "clipped_ste", scale=s)
        loss = tf.reduce_sum(y * up)
    dx, dv = tape.gradient(loss, [x, v])
    mids = (v.numpy()[:-1] + v.numpy()[1:]) / 2
    idx = np.searchsorted(mids, x.numpy() / s.numpy(), side="right")
    np.testing.assert_allclose(y.numpy(), v.numpy()[idx] * s.numpy(), rtol=1e-6)
    want = np.array([(up * s.numpy())[idx == i].sum() for i in range(k)])
    np.testing.assert_allclose(dv.numpy(), want, rtol=1e-4, atol=1e-4)
    inside = np.abs(x.numpy()) <= 1.0
    np.testing.assert_array_equal(dx.numpy(), np.where(inside, up, 0))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean((1, 2, 3)) > x[:, 4:].mean((1, 2, 3))).astype(np.int32)
    return x, y


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, name="conv"),
            L.ReLU(),
            L.DepthwiseConv2D(3, name="dw"),
            L.Flatten(),
            L.Dense(8, name="dense"),
            L.ReLU(),
            L.Dense(2, name="logits"),
        ]
    )


QUANTIZER = td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs", learn_values=True)


@pytest.fixture(scope="module")
def trained():
    x, y = _data()
    qat = td.quantize_model(_model(), QUANTIZER)
    qat.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return qat, x


def _learned(qat) -> dict:
    from tfmot_discrete.tfk.weights import codebook_items  # noqa: PLC0415

    return {i.layer: i.quantizer.codebook_of(i.qvars).values for i in codebook_items(qat)}


def test_values_move_under_training_and_stay_sorted_distinct_and_on_the_grid(trained):
    qat, _ = trained
    values = _learned(qat)
    assert sorted(values) == ["conv", "dense", "dw", "logits"]
    for name, v in values.items():
        assert not np.array_equal(v, QUANTIZER.values), name
        assert np.all(np.diff(v) > 0) and _on_grid(v), (name, v)
    for w in qat.weights:  # the trainable vectors themselves stay sorted (the constraint)
        if w.name.split("/")[-1].startswith("kernel_values"):
            assert np.all(np.diff(w.numpy()) > 0), w.name


def test_stripped_weights_are_exactly_the_learned_values_times_the_channel_scale(trained):
    from tfmot_discrete.tfk.weights import codebook_items  # noqa: PLC0415

    qat, _ = trained
    plain = td.strip_quantization(qat)
    for item in codebook_items(qat):
        v = item.quantizer.codebook_of(item.qvars).values.astype(np.float32)
        scale = item.quantizer.quantized_scale(item.latent, item.qvars).astype(np.float32)
        layer = plain.get_layer(item.layer)
        kernel = getattr(layer, item.weight).numpy()
        idx = np.argmin(np.abs(kernel[..., None] / scale[..., None] - v), axis=-1)
        np.testing.assert_array_equal(kernel, v[idx] * scale, err_msg=item.layer)  # bit for bit
    lines = []
    td.summary(qat, print_fn=lines.append)
    shown = "\n".join(lines)
    for v in _learned(qat).values():
        assert text.format_values(v) in shown  # the summary lists the learned values


@pytest.mark.parametrize("fmt", ["int8", "int4", "full_int8", "tflm_packed"])
def test_every_exported_file_holds_exactly_the_learned_values(trained, tmp_path, fmt):
    qat, x = trained
    report = tflite_export.export(
        qat, str(tmp_path / "m.tflite"), format=fmt, representative_data=x[:32]
    )
    assert report.ok
    values = _learned(qat)
    checks = {w["name"].split("/")[0]: w for w in report.to_dict()["weights"]}
    assert sorted(checks) == sorted(values)
    for name, check in checks.items():
        assert check["exact"], (fmt, name)
        assert check["codebook"] == values[name].tolist(), (fmt, name)
        if fmt in ("int8", "full_int8"):  # the power-of-two step: decoded bit for bit
            assert check["max_error"] == 0.0, (fmt, name)
    if fmt == "int4":
        stored = {name: c["storage"] for name, c in checks.items()}
        assert set(stored.values()) <= {"int4", "int8", "float32"}


def test_save_load_round_trip_keeps_the_learned_values_and_training_resumes(trained, tmp_path):
    qat, x = trained
    path = str(tmp_path / "m.keras")
    qat.save(path)
    with td.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert {k: v.tolist() for k, v in _learned(loaded).items()} == {
        k: v.tolist() for k, v in _learned(qat).items()
    }
    _, y = _data()
    loaded.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for v in _learned(loaded).values():
        assert np.all(np.diff(v) > 0) and _on_grid(v)


def _multiplier_task():
    """A `DiscreteMultiplier` with learned values in front of a ternary Dense."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    gain = rng.choice([1.0, -1.0, 0.3, -0.3], size=16).astype(np.float32)
    y = (x * gain) @ rng.normal(size=(16, 4)).astype(np.float32)
    keras.utils.set_random_seed(5)
    inp = keras.Input((16,))
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5], learn_values=True)
    out = L.Dense(4, name="d")(td.DiscreteMultiplier(q, name="mult")(inp))
    qat = td.quantize_model(keras.Model(inp, out), {"d": td.ternary()})
    qat.compile(keras.optimizers.Adam(0.02), "mse")
    qat.fit(x, y, epochs=10, batch_size=64, verbose=0)
    return qat, x


def test_a_discrete_multiplier_learns_its_values_strips_and_exports_them(tmp_path):
    qat, x = _multiplier_task()
    mult = qat.get_layer("mult")
    values = mult.quantizer.codebook_of(mult.quantizer_vars).values
    assert not np.array_equal(values, mult.quantizer.values), values
    assert np.all(np.diff(values) > 0) and _on_grid(values), values
    vector = mult.quantized_kernel().numpy()
    assert set(vector.tolist()) <= set(values.astype(np.float32).tolist()), (vector, values)
    plain = td.strip_quantization(qat)
    np.testing.assert_array_equal(plain.get_layer("mult").quantized_kernel().numpy(), vector)
    np.testing.assert_allclose(plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    report = tflite_export.export(qat, str(tmp_path / "m.tflite"), format="int8")
    assert report.ok and report.exact, report
    check = {w["name"]: w for w in report.to_dict()["weights"]}["mult/kernel"]
    assert check["codebook"] == values.tolist() and check["max_error"] == 0.0, check


def test_presets_take_learn_values_and_the_config_round_trips():
    for q in (
        td.ternary(learn_values=True),
        td.binary(learn_values=True),
        td.power_of_two(bits=3, learn_values=True),
    ):
        assert q.learn_values and q.get_config()["learn_values"] is True
        assert td.CodebookQuantizer.from_config(q.get_config()) == q
        assert q != td.CodebookQuantizer(q.values, scale=q.scale)
        assert "learn_values=True" in repr(q)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"values": [1, -1], "learn_values": "yes"}, "Received: learn_values='yes'"),
        ({"values": [1, -1], "learn_values": True, "stochastic": True}, "stochastic=True"),
        ({"values": np.arange(256.0), "learn_values": True}, "at most 255"),
    ],
)
def test_bad_arguments_name_the_argument_and_what_was_received(kwargs, says):
    with pytest.raises(ValueError, match="learn_values") as e:
        td.CodebookQuantizer(**kwargs)
    assert says in str(e.value)
