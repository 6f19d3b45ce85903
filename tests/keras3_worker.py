"""The Keras 3 checks of one backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_worker.py OUT_DIR [--export]

Runs the quantizer table (projection, ties, NaN, gradients, scales,
stochastic rounding, int8) and the layer-type table (training, strip,
`.keras` save/load, summary, DiscreteMultiplier) on the backend set in
`KERAS_BACKEND`, raising on the first failed check. Writes `parity.npz` (the
projected weights of fixed latent weights, for the parity test across
backends) and `checks.json` (the names of the checks that passed).
"""

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from keras3_cases import TABLE, assert_on_codebook, latent, parity_cases

import tfmot_discrete as td
from tfmot_discrete.core import quantizers as core_quantizers
from tfmot_discrete.keras3 import quantizers as k3q

ops = keras.ops
BACKEND = keras.backend.backend()
PASSED = []


def check(name):
    def deco(fn):
        start = time.perf_counter()
        fn()
        PASSED.append(name)
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return fn

    return deco


def state_for(q, w_np, log_scale=None):
    var = keras.Variable(w_np, name="kernel")
    holder = keras.layers.Layer(name=f"holder_{len(PASSED)}")
    if isinstance(q, td.CodebookQuantizer):
        q = q.with_channel_axes([-1])
    state = k3q.make_state(holder, var, q)
    if log_scale is not None and "log_scale" in state.variables:
        state.variables["log_scale"].assign(np.full(state.variables["log_scale"].shape, log_scale))
    else:
        k3q.initialize(state, var.value)
    return var, state


def grad(fn, x_np, g_np):
    """d sum(fn(x) * g) / dx on this backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415  (only this backend is installed for sure)

        x = tf.Variable(x_np)
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(fn(x) * g_np)
        return tape.gradient(y, x).numpy()
    if BACKEND == "jax":
        import jax  # noqa: PLC0415

        return np.asarray(jax.grad(lambda x: ops.sum(fn(x) * g_np))(ops.convert_to_tensor(x_np)))
    import torch  # noqa: PLC0415

    x = torch.tensor(x_np, requires_grad=True)
    (fn(x) * torch.tensor(g_np)).sum().backward()
    return x.grad.numpy()


def npy(t):
    return ops.convert_to_numpy(t)


@check("projection_in_codebook_and_exact")
def _projection():
    for name, q in TABLE.items():
        w = latent(1, dyadic=False)
        var, state = state_for(q, w)
        out = npy(k3q.quantize(state, var.value, False))
        s = k3q.scale_of(state, var.value)
        idx = q.codebook.index_numpy(out / s)
        np.testing.assert_allclose(out, q.codebook.values[idx] * s, rtol=1e-6, err_msg=name)
        if q.scale is None:
            want = q.codebook.project_numpy(w).astype("float32")
            np.testing.assert_array_equal(out, want, err_msg=name)


@check("ties_go_up_and_nan_spreads")
def _ties_nan():
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5])
    w = np.array([[0.0, 0.75, -0.75, -0.25, 3.0]], "float32")
    var, state = state_for(q, w)
    np.testing.assert_array_equal(
        npy(k3q.quantize(state, var.value, False)), [[0.5, 1, -0.5, -0.5, 1]]
    )
    for q in (td.binary(), td.ternary(), td.power_of_two(bits=4)):
        w = latent(2)
        w[1, 2] = np.nan
        var, state = state_for(q, w)
        assert np.isnan(npy(k3q.quantize(state, var.value, False))).all(), q


@check("gradients_straight_through")
def _gradients():
    g = np.random.default_rng(3).normal(size=(6, 5)).astype("float32")
    for name, q in TABLE.items():
        if q.stochastic:
            continue
        w = latent(4, dyadic=False) * 1.3
        _, state = state_for(q, w)
        got = grad(lambda x, st=state: k3q.quantize(st, x, True), w, g)
        lo, hi = q.codebook.low, q.codebook.high
        mask = np.ones_like(w) if q.gradient == "ste" else ((w >= lo) & (w <= hi)).astype("float32")
        want = g * mask
        if q.scale == "learned":
            s = k3q.scale_of(state, w)
            sigma = np.mean(np.abs(w), axis=0, keepdims=True)
            want = want * (s / sigma)
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@check("stochastic_rounding_unbiased")
def _stochastic():
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5], stochastic=True)
    w = np.full((6, 5), 0.8, "float32")
    var, state = state_for(q, w)
    seed = keras.random.SeedGenerator(7)
    # 40 draws of one shape (on JAX a new shape is a new compilation).
    out = np.stack([npy(k3q.quantize(state, var.value, True, seed)) for _ in range(40)])
    assert set(np.unique(out)) == {0.5, 1.0}, np.unique(out)
    assert abs(out.mean() - 0.8) < 0.03, out.mean()
    np.testing.assert_array_equal(npy(k3q.quantize(state, var.value, False)), np.ones_like(w))


@check("int8_codes_and_steps")
def _int8():
    w = latent(5, dyadic=False)
    var, state = state_for(core_quantizers.int8_quantizer_for([-1]), w)
    out = npy(k3q.quantize(state, var.value, False))
    step = np.abs(w).max(axis=0) / 127
    codes = out / step
    np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
    assert np.abs(np.round(codes)).max() == 127


#: Layers left out with --small (on JAX, where every eager operation on a new
#: shape is an XLA compilation: the full table costs a minute there).
FULL_ONLY = ("sep", "up", "conv1d", "sep1d", "up1d")


def layer_model(small=False):
    """Every supported layer type, in two branches (an image and a token
    sequence); with `small`, one of each kind (conv, depthwise, embedding,
    dense, multiplier)."""
    L = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(6, 3, name="conv")(image)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    if not small:
        x = L.SeparableConv2D(6, 3, padding="same", name="sep")(x)
        x = L.Conv2DTranspose(4, 3, strides=2, name="up")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    t = L.Embedding(20, 8, name="emb")(tokens)
    if not small:
        t = L.Conv1D(8, 3, name="conv1d")(t)
        t = L.SeparableConv1D(8, 3, name="sep1d")(t)
        t = L.Conv1DTranspose(4, 3, name="up1d")(t)
    t = L.GlobalAveragePooling1D(name="gap1d")(t)
    t = td.keras3.DiscreteMultiplier([1, -1], name="mult")(t)
    x = L.Concatenate(name="cat")([x, t])
    out = L.Dense(3, name="dense")(x)
    return keras.Model([image, tokens], out, name="layer_model")


MAPPING = {
    "conv": "int8",
    "dw": td.ternary(scale="learned"),
    "sep": td.binary(scale="mean_abs"),
    "up": td.power_of_two(bits=3),
    "emb": td.ternary(),
    "conv1d": td.binary(gradient="ste"),
    "sep1d": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="learned"),
    "up1d": "int8",
    "dense": td.CodebookQuantizer([1, -1, 0.5, -0.5], stochastic=True),
}


def data(n=16):
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(n, 8, 8, 3)).astype("float32"),
        rng.integers(0, 20, size=(n, 10)).astype("int32"),
    ]
    return x, rng.normal(size=(n, 3)).astype("float32")


QAT = {}


@check("layer_table_trains_strips_saves")
def _models():
    out_dir, small = pathlib.Path(sys.argv[1]), "--small" in sys.argv
    model = layer_model(small)
    x, y = data()
    mapping = {k: v for k, v in MAPPING.items() if not (small and k in FULL_ONLY)}
    qat = td.quantize_model(model, mapping)
    assert isinstance(qat, keras.Model) and not isinstance(qat, td.keras.Model)
    wrapped = sorted(
        la.layer.name for la in qat.layers if isinstance(la, td.keras3.QuantizeWrapper)
    )
    assert wrapped == sorted(mapping), wrapped
    before = {v.path: npy(v.value).copy() for v in qat.trainable_variables}
    # Compiled on JAX (jit; eager JAX compiles every operation); eager on
    # TensorFlow (tracing and XLA cost more than two steps: the
    # DiscreteMultiplier check trains with XLA) and PyTorch.
    qat.compile(
        keras.optimizers.Adam(0.01),
        "mse",
        jit_compile=BACKEND == "jax",
        run_eagerly=BACKEND != "jax",
    )
    hist = qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    moved = [
        v.path for v in qat.trainable_variables if not np.array_equal(before[v.path], npy(v.value))
    ]
    for layer, weight, var, state in td.keras3.quantize.items(qat):
        assert var.path in moved, (layer, weight, moved)
        if not isinstance(state.quantizer, core_quantizers.Int8WeightQuantizer):
            lat = npy(var.value)
            assert lat.min() >= state.quantizer.codebook.low - 1e-6, (layer, weight)
            assert lat.max() <= state.quantizer.codebook.high + 1e-6, (layer, weight)
    plain = td.strip_quantization(qat)
    assert not any(isinstance(la, td.keras3.QuantizeWrapper) for la in plain.layers)
    np.testing.assert_allclose(npy(plain(x)), npy(qat(x)), atol=1e-5, rtol=1e-5)
    for layer, weight, var, state in td.keras3.quantize.items(qat):
        stripped = {w.name: npy(w.value) for w in plain.get_layer(layer).weights}[weight]
        want = td.keras3.quantize.projected(state, var.value)
        np.testing.assert_array_equal(stripped, want, err_msg=f"{layer}/{weight}")
        assert_on_codebook(state, var.value, want)
    path = out_dir / "layer_model.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(npy(loaded(x)), npy(qat(x)))
    if BACKEND != "jax":  # (a second train-step compilation on JAX)
        loaded.compile(keras.optimizers.Adam(0.01), "mse", run_eagerly=True)
        loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)  # training resumes
    QAT["model"], QAT["x"] = qat, x


@check("discrete_multiplier_learns_the_sign")
def _multiplier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = x * np.array([1, -1, -1, 1], "float32")
    layer = td.keras3.DiscreteMultiplier([1, -1], kernel_initializer="ones", name="m")
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=BACKEND != "torch")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    np.testing.assert_array_equal(npy(layer.quantized_kernel()), [1, -1, -1, 1])


def parity_weights():
    """`{key: projected}` of the parity cases, as a quantized Keras 3 Dense
    kernel computes them (a learned scale set to 1)."""
    out = {}
    for key, q, w in parity_cases():
        if isinstance(q, str):
            q = core_quantizers.int8_quantizer_for([-1])
        var, state = state_for(q, w, log_scale=0.0)
        out[key] = td.keras3.quantize.projected(state, var.value)
    return out


def _fused(t, q, s):
    qops = td.keras3.ops
    cb = q.codebook
    return qops.project_straight_through(t, cb.values, cb.low, cb.high, q.gradient, scale=s)


def _chain(t, q, s):
    qops = td.keras3.ops
    cb, finite = q.codebook, None if s is None else qops.all_finite(s)
    return qops.straight_through(
        lambda u: qops.project(u, cb.values, scale=s, finite=finite), t, cb.low, cb.high, q.gradient
    )


def torch_chain_is_the_keras_ops_chain():
    """PyTorch's fused projection (`project_straight_through`) gives the bits
    of the `keras.ops` chain it replaces, values and gradients: every
    deterministic codebook of up to 8 values, both estimators, float32 and
    float64, with and without a scale, ties and the window's ends included."""
    import functools  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from tfmot_discrete.core.codebook import midpoints  # noqa: PLC0415

    rng = np.random.default_rng(6)
    cases = 0
    for name, q in TABLE.items():
        cb = q.codebook
        if q.stochastic or len(cb.values) > 8:
            continue
        for dtype in ("float32", "float64"):
            w = rng.uniform(1.5 * cb.low, 1.5 * cb.high, size=(6, 5)).astype(dtype)
            mids = midpoints(np.asarray(cb.values, np.float64)).astype(dtype)
            w[0, : min(5, mids.size)] = mids[:5]  # ties go up
            w[1, :2] = cb.low, cb.high  # the window is closed
            g = rng.normal(size=w.shape).astype(dtype)
            for scaled in (False, True):
                s = td.keras3.ops.mean_abs_scale(ops.convert_to_tensor(w), [-1]) if scaled else None
                fused = functools.partial(_fused, q=q, s=s)
                chain = functools.partial(_chain, q=q, s=s)
                node = fused(torch.tensor(w, requires_grad=True)).grad_fn
                assert "TorchSelectChain" in type(node).__name__, (name, node)  # the fused path
                x = ops.convert_to_tensor(w)
                for got, want in (
                    (npy(fused(x)), npy(chain(x))),
                    (grad(fused, w, g), grad(chain, w, g)),
                ):
                    assert got.dtype == want.dtype == np.dtype(dtype)
                    bits = np.dtype(f"uint{8 * want.itemsize}")
                    np.testing.assert_array_equal(got.view(bits), want.view(bits), err_msg=name)
                cases += 1
    assert cases >= 24, cases
    # An empty weight (a zero-unit layer) projects to an empty tensor, as on the chain.
    assert tuple(_fused(torch.zeros(0, 4), td.binary(), None).shape) == (0, 4)


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    np.savez(out_dir / "parity.npz", **parity_weights())
    PASSED.append("parity_weights")
    if "--summary" in sys.argv:
        table = td.summary(QAT["model"], print_fn=None)
        for layer, _weight, _, _ in td.keras3.quantize.items(QAT["model"]):
            assert f"{layer}/" in table, (layer, table)
        PASSED.append("summary")
    if "--torch-chain" in sys.argv:
        torch_chain_is_the_keras_ops_chain()
        PASSED.append("torch_chain_is_the_keras_ops_chain")
    if "--export" in sys.argv:
        import tflite_export  # only with --export

        # The two-input model of the layer table, trained above on this backend.
        qat, x = QAT["model"], QAT["x"]
        report = tflite_export.export(qat, out_dir / "layer_model.tflite", format="int8")
        assert report.ok and report.exact, report
        assert len(report.weights) == len(td.keras3.quantize.items(qat)), report
        twin = td.to_tf_keras(qat)
        np.testing.assert_allclose(twin(x).numpy(), npy(qat(x)), atol=1e-5)
        PASSED.append("export_int8_exact")
    (out_dir / "checks.json").write_text(json.dumps({"backend": BACKEND, "passed": PASSED}))
