"""The toolbox on Keras 3 models, on one backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_tools_worker.py OUT_DIR

Checks `td.CodebookMonitor`, `td.Distiller`, `td.sensitivity`, `td.plan`,
`td.recalibrate_batchnorm` / `td.RecalibrateBatchNorm` and `td.plot_weights`
on the backend set in `KERAS_BACKEND`, against numbers computed here by hand,
raising on the first failed check. Rebuilding a model in tf_keras is made to
fail, so every tool runs on the Keras 3 path. Writes `checks.json`: the
backend, the names of the checks that passed and their seconds.
"""

import json
import os
import pathlib
import re
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tfmot_discrete as td
from tfmot_discrete import tfk
from tfmot_discrete.tfk.weights import QuantizationWarning
from tfmot_discrete.tools import plotting

ops = keras.ops
L = keras.layers
BACKEND = keras.backend.backend()
PASSED = {}
RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 6)).astype("float32")
Y = RNG.integers(0, 3, size=24)


def _no_rebuild(model):
    raise AssertionError(f"{model.name!r} was rebuilt in tf_keras")


tfk.from_keras3 = _no_rebuild  # every tool must stay on the Keras 3 path


def check(name):
    def deco(fn):
        start = time.perf_counter()
        fn()
        PASSED[name] = round(time.perf_counter() - start, 2)
        return fn

    return deco


def npy(t):
    return ops.convert_to_numpy(t)


def float_model(name="float"):
    """Dense, Dropout, BatchNormalization, Dense: trained weights stand-in."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="a"),
            L.Dropout(0.5, name="drop"),
            L.BatchNormalization(name="bn"),
            L.Dense(3, name="b"),
        ],
        name=name,
    )


def xent(y, logits):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.mean(-logp[np.arange(len(y)), y]))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def bn_input_moments(qat):
    """Mean and variance over X of what `bn` sees (Dropout off): the stripped
    model's `a` outputs, in float64."""
    feat = npy(td.strip_quantization(qat).get_layer("a")(X)).astype(np.float64)
    return feat.mean(0), feat.var(0)


@check("monitor_shares_and_flips")
def _monitor():
    qat = td.quantize_model(
        float_model(), {"a": td.ternary(), "b": td.CodebookQuantizer([1, -1, 0.5, -0.5])}
    )
    qat.compile(keras.optimizers.SGD(2.0), keras.losses.SparseCategoricalCrossentropy(True))
    seen = []

    class Stripped(keras.callbacks.Callback):
        """After the monitor: each epoch's stripped weights, to count by hand."""

        def on_epoch_end(self, epoch, logs=None):
            plain = td.strip_quantization(self.model)
            seen.append({n: plain.get_layer(n).kernel.numpy() for n in ("a", "b")})

    lines = []
    history = qat.fit(
        X,
        Y,
        batch_size=8,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[td.CodebookMonitor(print_fn=lines.append), Stripped()],
    ).history
    assert len(lines) == 2 and lines[1].startswith("codebook epoch 2: a/kernel flips"), lines
    flips = 0.0
    for epoch, kernels in enumerate(seen):
        # a: ternary x a positive channel scale: the sign is the codebook value.
        a = kernels["a"]
        want = {"-1": np.mean(a < 0), "0": np.mean(a == 0), "1": np.mean(a > 0)}
        # b: {±1, ±0.5} without a scale: the stripped values are the codebook's.
        b = kernels["b"]
        want_b = {f"{v:g}": np.mean(b == v) for v in (-1, -0.5, 0.5, 1)}
        for label, shares in (("a/kernel", want), ("b/kernel", want_b)):
            got = {k: history[f"{label}/share_{k}"][epoch] for k in shares}
            assert got == shares, (epoch, label, got, shares)
            assert abs(sum(got.values()) - 1.0) < 1e-12, got
    for name in ("a", "b"):
        before, after = seen[0][name], seen[1][name]
        if name == "a":
            before, after = np.sign(before), np.sign(after)
        want_flip = float(np.mean(before != after))
        assert history[f"{name}/kernel/flip_rate"][1] == want_flip, (name, history)
        flips += want_flip
    assert flips > 0, "no weight flipped: the flip check would hold for any monitor"


@check("distiller_loss_and_frozen_teacher")
def _distiller():
    teacher = float_model("teacher")
    teacher.get_layer("bn").moving_variance.assign(np.full(8, 2.0, "float32"))
    student = td.quantize_model(teacher, td.ternary())
    dist = td.Distiller(student, teacher=teacher, temperature=2.0, alpha=0.3)
    assert isinstance(dist, keras.Model) and dist.teacher is teacher
    dist.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t_before = [w.copy() for w in teacher.get_weights()]
    s_before = [w.copy() for w in student.get_weights()]
    # The formula on the one batch, at the weights the step starts from (the
    # student in training mode, without dropout's randomness: rate set to 0).
    student.get_layer("drop").rate = 0.0
    t_out = npy(teacher(X, training=False))
    s_out = npy(student(X, training=True))
    p, q = log_softmax(t_out / 2.0), log_softmax(s_out / 2.0)
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), -1)))
    label = xent(Y, s_out)
    history = dist.fit(X, Y, batch_size=24, epochs=1, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "label_loss", "distillation_loss", "accuracy"}, history
    np.testing.assert_allclose(history["label_loss"][0], label, rtol=1e-5)
    np.testing.assert_allclose(history["distillation_loss"][0], kl, rtol=1e-4)
    np.testing.assert_allclose(history["loss"][0], 0.3 * label + 0.7 * 4.0 * kl, rtol=1e-5)
    for w0, w1 in zip(t_before, teacher.get_weights()):
        np.testing.assert_array_equal(w0, w1)  # BN statistics too
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    moved = [not np.array_equal(w0, w1) for w0, w1 in zip(s_before, student.get_weights())]
    assert any(moved), "the student did not train"
    assert len(dist.trainable_variables) == len(student.trainable_variables)
    logs = dist.evaluate(X, Y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}, logs
    np.testing.assert_allclose(logs["loss"], xent(Y, npy(student(X, training=False))), rtol=1e-5)
    # BatchNormalization recalibration of a Distiller is the student's.
    td.recalibrate_batchnorm(dist, X)
    mean, var = bn_input_moments(student)
    np.testing.assert_allclose(npy(student.get_layer("bn").moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(npy(teacher.get_layer("bn").moving_variance), 2.0)


@check("sensitivity_and_plan_rows_are_single_layer_quantizations")
def _sensitivity():
    model = float_model()
    model.get_layer("bn").moving_mean.assign(np.full(8, 0.3, "float32"))
    q = td.binary(scale="mean_abs")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    recal = BACKEND != "jax"  # eager recalibration compiles every op on JAX
    rows = td.sensitivity(
        model, q, (X, Y), metric=loss, recalibration_data=X if recal else None, print_fn=None
    )
    assert [r.layer for r in rows] == ["a", "b"], rows
    assert [r.weights for r in rows] == [6 * 8, 8 * 3], rows
    base = xent(Y, npy(model(X, training=False)))
    # td.plan scores each layer with the same single-layer projections.
    plan = td.plan(model, (X, Y), candidates=[q], metric=loss, print_fn=None)
    assert [p.layer for p in plan.rows] == ["a", "b"] and plan.mapping == {"a": q, "b": q}
    for r, p in zip(rows, plan.rows):
        np.testing.assert_allclose(r.baseline, base, rtol=1e-5)
        with warnings.catch_warnings():  # the other layer stays float, on purpose
            warnings.simplefilter("ignore", QuantizationWarning)
            single = td.strip_quantization(td.quantize_model(model, {re.escape(r.layer): q}))
        kernel = single.get_layer(r.layer).kernel.numpy()
        assert np.unique(np.abs(kernel), axis=None).size <= kernel.shape[-1], r.layer
        projected = xent(Y, npy(single(X, training=False)))
        np.testing.assert_allclose(p.loss, projected - base, rtol=1e-4, atol=1e-6)
        if recal:
            td.recalibrate_batchnorm(single, X)
        np.testing.assert_allclose(
            r.quantized, xent(Y, npy(single(X, training=False))), rtol=1e-5, err_msg=r.layer
        )
    assert max(abs(r.change) for r in rows) > 1e-3, rows


@check("recalibrate_batchnorm_and_callback")
def _batchnorm():
    qat = td.quantize_model(float_model(), td.ternary(scale="learned"))
    bn = qat.get_layer("bn")
    assert np.all(npy(bn.moving_variance) == 1.0)
    assert td.recalibrate_batchnorm(qat, X, batch_size=10) == 3  # 10 + 10 + 4 samples
    mean, var = bn_input_moments(qat)
    np.testing.assert_allclose(npy(bn.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(npy(bn.moving_variance), var, rtol=1e-4, atol=1e-6)
    # The callback, at the end of fit, for the weights fit left.
    qat.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(X, Y, batch_size=12, epochs=1, verbose=0, callbacks=[td.RecalibrateBatchNorm(X)])
    mean2, var2 = bn_input_moments(qat)
    assert np.abs(mean2 - mean).max() > 1e-4, "fit did not change the BN inputs"
    np.testing.assert_allclose(npy(bn.moving_mean), mean2, atol=1e-5)
    np.testing.assert_allclose(npy(bn.moving_variance), var2, rtol=1e-4, atol=1e-6)


@check("plot_weights_reads_the_keras3_weights")
def _plot():
    qat = td.quantize_model(float_model(), {"a": td.ternary(scale="learned"), "b": td.binary()})
    panels = plotting._weights(qat)  # noqa: SLF001  (what each histogram shows)
    assert [p[0] for p in panels] == ["a/kernel", "b/kernel"], panels
    latent = qat.get_layer("quant_a").states[0][0]
    np.testing.assert_array_equal(panels[0][2], npy(latent.value))
    # The learned scale starts at mean|w| per output channel.
    np.testing.assert_allclose(
        np.reshape(panels[0][3], -1), np.abs(npy(latent.value)).mean(0), rtol=1e-5
    )
    np.testing.assert_array_equal(panels[1][3], 1.0)  # binary() has no scale
    out = pathlib.Path(sys.argv[1]) / "weights.png"
    assert td.plot_weights(qat, out) == str(out) and out.stat().st_size > 1000


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    (out_dir / "checks.json").write_text(json.dumps({"backend": BACKEND, "passed": PASSED}))
