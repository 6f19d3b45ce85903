"""`Distiller`: the loss it minimizes, what trains, and the student's path to a file."""

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import distill
from tfmot_discrete.tfk.weights import codebook_items

L = keras.layers


def _mlp():
    return keras.Sequential(
        [keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")]
    )


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize(("temperature", "alpha"), [(4.0, 0.5), (2.0, 0.2), (1.0, 1.0)])
def test_loss_is_alpha_label_plus_t2_kl(temperature, alpha):
    x, y = _data()
    teacher = _mlp()
    student = td.quantize_model(_mlp(), td.ternary())
    dist = td.Distiller(student, teacher, temperature=temperature, alpha=alpha)
    dist.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    logs = dist.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    s = student.predict(x, verbose=0).astype(np.float64)
    t = teacher.predict(x, verbose=0).astype(np.float64)
    label = -_log_softmax(s)[np.arange(len(y)), y].mean()
    log_p, log_q = _log_softmax(t / temperature), _log_softmax(s / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    assert logs["label_loss"][0] == pytest.approx(label, rel=1e-5)
    assert logs["distillation_loss"][0] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    want = alpha * label + (1 - alpha) * temperature**2 * kl
    assert logs["loss"][0] == pytest.approx(want, rel=1e-5)


def test_only_the_student_trains_and_evaluate_predict_use_it():
    x, y = _data()
    teacher = _mlp()
    student = td.quantize_model(_mlp(), td.binary(scale="mean_abs"))
    teacher_w = [w.copy() for w in teacher.get_weights()]
    student_w = [w.copy() for w in student.get_weights()]
    dist = td.Distiller(student, teacher)
    assert (dist.temperature, dist.alpha) == (
        distill.DEFAULT_TEMPERATURE,
        distill.DEFAULT_ALPHA,
    )
    dist.compile(
        keras.optimizers.Adam(0.05),
        keras.losses.SparseCategoricalCrossentropy(True),
        metrics=["accuracy"],
    )
    hist = dist.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y)).history
    assert {"loss", "label_loss", "distillation_loss", "accuracy", "val_loss"} <= set(hist)
    assert "val_distillation_loss" not in hist
    # The teacher stayed trainable, as it was given, and did not train.
    assert teacher.trainable and len(teacher.trainable_weights) == 4
    for a, b in zip(teacher.get_weights(), teacher_w):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(student.get_weights(), student_w)) > 0.01
    np.testing.assert_allclose(dist.predict(x, verbose=0), student.predict(x, verbose=0))
    s = student.predict(x, verbose=0).astype(np.float64)
    label = -_log_softmax(s)[np.arange(len(y)), y].mean()
    acc = float((s.argmax(-1) == y).mean())
    loss, metric = dist.evaluate(x, y, batch_size=len(x), verbose=0)
    assert loss == pytest.approx(label, rel=1e-5)
    assert metric == pytest.approx(acc)


def test_teacher_is_left_as_found_and_quantizes_fully_afterwards():
    teacher = _mlp()
    td.Distiller(td.quantize_model(teacher, td.ternary()), teacher)
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    # Quantizing the float model again trains every latent kernel.
    qat = td.quantize_model(teacher, td.ternary())
    latents = [item.latent for item in codebook_items(qat)]
    assert len(latents) == 2
    assert {id(v) for v in latents} <= {id(v) for v in qat.trainable_weights}
    x, _ = _data(16)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(qat(x, training=True)))
    assert all(np.any(g.numpy() != 0) for g in tape.gradient(loss, latents))


def test_softmax_outputs_with_from_logits_false():
    x, y = _data()
    teacher = keras.Sequential([_mlp(), L.Softmax()])
    student = keras.Sequential([_mlp(), L.Softmax()])
    dist = td.Distiller(student, teacher, temperature=3.0, alpha=0.0, from_logits=False)
    dist.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy())
    logs = dist.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    log_p = _log_softmax(np.log(teacher.predict(x, verbose=0).astype(np.float64)) / 3.0)
    log_q = _log_softmax(np.log(student.predict(x, verbose=0).astype(np.float64)) / 3.0)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    assert logs["loss"][0] == pytest.approx(9.0 * kl, rel=1e-4)


def test_distilled_student_recalibrates_strips_and_exports(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, 48)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    teacher = keras.Model(inp, L.Dense(4, name="logits")(L.Flatten()(h)))
    student = td.quantize_model(teacher, {"logits": "int8", ".*": td.ternary()})
    dist = td.Distiller(student, teacher)
    dist.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    teacher_stats = teacher.get_layer("bn").moving_mean.numpy().copy()
    dist.fit(
        x,
        y,
        epochs=1,
        batch_size=16,
        verbose=0,
        callbacks=[td.RecalibrateBatchNorm(x, batch_size=len(x))],
    )
    # The callback recalibrated the student's BatchNorm, not the teacher's; so
    # does a direct call on the Distiller.
    np.testing.assert_array_equal(teacher.get_layer("bn").moving_mean.numpy(), teacher_stats)
    assert td.recalibrate_batchnorm(dist, x, batch_size=len(x)) == 1
    np.testing.assert_array_equal(teacher.get_layer("bn").moving_mean.numpy(), teacher_stats)
    plain = td.strip_quantization(student)
    conv = keras.Model(plain.input, plain.get_layer("conv").output)(x).numpy().reshape(-1, 4)
    np.testing.assert_allclose(
        plain.get_layer("bn").moving_mean.numpy(), conv.mean(0), rtol=1e-5, atol=1e-5
    )
    path = tmp_path / "student.keras"
    student.save(path)
    report = tflite_export.export(str(path), tmp_path / "s.tflite", format="int8")
    assert report.ok and report.exact, str(report)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, r"`temperature` must be a number > 0.0. Received: temperature=0"),
        ({"alpha": 1.5}, r"`alpha` must be a number >= 0.0 and <= 1.0. Received: alpha=1.5"),
        ({"alpha": "x"}, r"Received: alpha='x'"),
        ({"teacher": "model"}, r"`teacher` must be a tf_keras model"),
        ({"from_logits": "yes"}, r"Received: from_logits='yes'"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"student": _mlp(), "teacher": _mlp(), **kwargs}
    with pytest.raises(ValueError, match=match):
        td.Distiller(**args)
    other = keras.Sequential([keras.Input((6,)), L.Dense(5)])
    with pytest.raises(ValueError, match=r"same shape.*\(None, 3\).*\(None, 5\)"):
        td.Distiller(_mlp(), other)
