"""`td.finetune_schedule`: linear warmup to the peak, cosine decay to 0, bad input refused."""

import math

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

import tfmot_discrete as td


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in range(steps + 1)])


def test_warmup_then_cosine_to_zero():
    lr = _values(td.finetune_schedule(0.02, steps=200, warmup=0.1), 200)
    np.testing.assert_allclose(lr[0], 0.02 * 0.01, rtol=1e-5)
    np.testing.assert_allclose(lr[10], 0.02 * (0.01 + 0.99 * 0.5), rtol=1e-5)  # linear rise
    np.testing.assert_allclose(lr[20], 0.02, rtol=1e-5)  # the peak at the end of the warmup
    assert np.all(np.diff(lr[:21]) > 0) and np.all(np.diff(lr[20:]) <= 0)
    for s in (60, 110, 150):
        expected = 0.01 * (1 + math.cos(math.pi * (s - 20) / 180))
        np.testing.assert_allclose(lr[s], expected, rtol=1e-5)
    assert lr[200] == pytest.approx(0.0, abs=1e-9)


def test_no_warmup_starts_at_the_peak():
    lr = _values(td.finetune_schedule(1e-3, steps=50, warmup=0), 50)
    np.testing.assert_allclose(lr[0], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(lr[25], 5e-4, rtol=1e-5)
    assert lr[50] == pytest.approx(0.0, abs=1e-9)


def test_drives_an_optimizer():
    var = tf.Variable(1.0)
    opt = td.keras.optimizers.SGD(td.finetune_schedule(0.5, steps=10, warmup=0))
    opt.apply_gradients([(tf.constant(1.0), var)])
    assert float(var.numpy()) == pytest.approx(0.5)  # the first step uses the peak


def test_keras3_schedule_is_the_same_and_drives_a_keras3_optimizer():
    lr = td.finetune_schedule(0.02, steps=200, warmup=0.1, keras3=True)
    assert isinstance(lr, keras3.optimizers.schedules.LearningRateSchedule)
    want = _values(td.finetune_schedule(0.02, steps=200, warmup=0.1), 200)
    np.testing.assert_allclose(_values(lr, 200), want, rtol=1e-6, atol=1e-12)
    var = keras3.Variable(1.0)
    opt = keras3.optimizers.SGD(td.finetune_schedule(0.5, steps=10, warmup=0, keras3=True))
    opt.apply_gradients([(keras3.ops.ones(()), var)])
    assert float(keras3.ops.convert_to_numpy(var.value)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"peak_lr": 0.0, "steps": 10}, "peak_lr"),
        ({"peak_lr": -1e-3, "steps": 10}, "peak_lr"),
        ({"peak_lr": "0.01", "steps": 10}, "peak_lr"),
        ({"peak_lr": 1e-3, "steps": 0}, "steps"),
        ({"peak_lr": 1e-3, "steps": 2.5}, "steps"),
        ({"peak_lr": 1e-3, "steps": 10, "warmup": 1.0}, "warmup"),
        ({"peak_lr": 1e-3, "steps": 10, "warmup": -0.1}, "warmup"),
        ({"peak_lr": 1e-3, "steps": 10, "keras3": "yes"}, "keras3"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .* Received: {name}="):
        td.finetune_schedule(**kwargs)
