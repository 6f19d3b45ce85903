"""The Keras 3 layer-type checks of one backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_layers_worker.py OUT_DIR [--summary] [--export]

On the backend set in `KERAS_BACKEND`: a model holding every layer type the
tf_keras path supports beyond plain kernels (LSTM, GRU, SimpleRNN,
RNN(LSTMCell), Bidirectional, MultiHeadAttention, EinsumDense,
TimeDistributed, ConvLSTM1D/2D, a model used as a layer) is quantized with a
per-weight mapping, trained two steps, stripped, saved and loaded, raising on
the first failed check; the trained model's weights project to what the
tf_keras path gives them (`td.to_tf_keras`). With `--summary`, `td.summary` of
the layer model; with `--export`, a GRU and attention model exported exactly.
Writes `checks.json` (the names of the checks that passed).
"""

import json
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from keras3_cases import assert_on_codebook

import tfmot_discrete as td
from tfmot_discrete.core import quantizers as core_quantizers
from tfmot_discrete.core.rules import QuantizationWarning
from tfmot_discrete.keras3 import quantize as k3
from tfmot_discrete.keras3 import quantizers as k3q
from tfmot_discrete.tfk import configs, weights

L = keras.layers
BACKEND = keras.backend.backend()
OUT = pathlib.Path(sys.argv[1])
PASSED = []


def passes(name, fn):
    """Runs the check `fn` (raising when it fails) and records `name`."""
    start = time.perf_counter()
    fn()
    PASSED.append(name)
    print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def check(name):
    def deco(fn):
        passes(name, fn)
        return fn

    return deco


def npy(t):
    return keras.ops.convert_to_numpy(t)


def run(model, x):
    """`model`'s outputs on `x`: compiled on JAX (where an eager call compiles
    each operation), eager elsewhere."""
    if BACKEND == "jax":
        return model.predict(x, batch_size=len(x), verbose=0)
    return npy(model(x))


#: Kernels start at zero and get NumPy random values after (`randomize`): a
#: random initializer is an operation that JAX compiles anew for every shape.
ZERO = {"kernel_initializer": "zeros"}
RNN = dict(ZERO, recurrent_initializer="zeros")
SEQ = dict(RNN, return_sequences=True)


def randomize(model, seed=0):
    """Every kernel of `model` uniform in [-0.7, 0.7] (biases stay as built)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "kernel" in v.name:
            v.assign(rng.uniform(-0.7, 0.7, size=tuple(v.shape)).astype("float32"))
    return model


def layer_model():
    """Every composite layer type, on 6 steps of 3 features."""
    inp = keras.Input((6, 3), name="x")
    x = L.LSTM(4, **SEQ, name="lstm")(inp)
    x = L.GRU(4, **SEQ, name="gru")(x)
    x = L.SimpleRNN(4, **SEQ, name="srnn")(x)
    x = L.RNN(L.LSTMCell(4, **RNN), return_sequences=True, name="rnn")(x)
    x = L.Bidirectional(L.GRU(2, **SEQ), name="bidi")(x)
    x = L.MultiHeadAttention(2, 2, **ZERO, name="mha")(x, x)
    x = L.EinsumDense("abc,cd->abd", (6, 4), **ZERO, name="ein")(x)
    x = L.TimeDistributed(L.Dense(4, **ZERO), name="td")(x)
    bb_in = keras.Input((6, 4))
    backbone = keras.Model(bb_in, L.Dense(4, **ZERO, name="bb_dense")(bb_in), name="backbone")
    x = backbone(x)
    a = L.ConvLSTM1D(2, 2, padding="same", **RNN, name="convlstm1d")(L.Reshape((6, 4, 1))(x))
    b = L.ConvLSTM2D(2, 2, padding="same", **RNN, name="convlstm2d")(L.Reshape((6, 2, 2, 1))(x))
    x = L.Concatenate()([L.Flatten()(a), L.Flatten()(b)])
    return randomize(keras.Model(inp, L.Dense(2, **ZERO, name="out")(x), name="layers"))


MAPPING = {
    "gru/recurrent_kernel": "int8",
    "mha/query/kernel": td.binary(scale="mean_abs"),
    "bidi/backward/.*": td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="learned"),
    "lstm/recurrent_kernel": None,
    ".*": td.ternary(),
}
#: "<layer>/<weight>" of every weight MAPPING puts on a codebook or 8 bits.
QUANTIZED = {
    "lstm/kernel",
    *(f"{la}/{w}" for la in ("gru", "srnn", "rnn") for w in ("kernel", "recurrent_kernel")),
    *(f"bidi/{d}/{w}" for d in ("forward", "backward") for w in ("kernel", "recurrent_kernel")),
    *(f"mha/{p}/kernel" for p in ("query", "key", "value", "attention_output")),
    "ein/kernel",
    "td/kernel",
    "bb_dense/kernel",
    *(f"convlstm{n}d/{w}" for n in (1, 2) for w in ("kernel", "recurrent_kernel")),
    "out/kernel",
}
#: Output-channel axes of some weights (as `configs.py` gives them on tf_keras).
AXES = {
    "mha/key/kernel": [-2, -1],
    "mha/attention_output/kernel": [-1],
    "ein/kernel": [-1],
    "gru/kernel": [-1],
    "bidi/forward/recurrent_kernel": [-1],
}

DATA = {}


def data(n=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def codes(var, state):
    """The codebook index of each value of a projected weight."""
    return state.quantizer.codebook.index_numpy(
        k3.projected(state, var.value) / k3q.scale_of(state, var.value)
    )


def compile_for_backend(model, lr):
    # JAX compiled (eager JAX compiles every operation); TensorFlow and
    # PyTorch eager (tracing costs more than two steps).
    model.compile(
        keras.optimizers.Adam(lr), "mse", jit_compile=BACKEND == "jax", run_eagerly=BACKEND != "jax"
    )


@check("float_notice_and_strict")
def _notices():
    model = layer_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = td.quantize_model(model, MAPPING)
    notices = [str(w.message) for w in caught if w.category is QuantizationWarning]
    assert len(notices) == 1, notices
    assert "'lstm'" in notices[0] and "['recurrent_kernel']" in notices[0], notices
    assert "maps them to None" in notices[0], notices
    try:
        td.quantize_model(model, MAPPING, strict=True)
    except ValueError as e:
        assert "strict=True" in str(e) and "'lstm'" in str(e), e
    else:
        raise AssertionError("strict=True did not raise")
    DATA["model"], DATA["qat"] = model, qat


@check("layer_types_wrap")
def _wrap():
    qat = DATA["qat"]
    assert not any(isinstance(la, keras.Model) for la in qat.layers)  # backbone flattened
    found = {f"{layer}/{weight}": state for layer, weight, _, state in k3.items(qat)}
    assert set(found) == QUANTIZED, sorted(set(found) ^ QUANTIZED)
    for name, axes in AXES.items():
        assert found[name].quantizer.per_channel_axis == axes, (name, found[name].quantizer)
    assert isinstance(found["gru/recurrent_kernel"].quantizer, core_quantizers.Int8WeightQuantizer)
    assert found["mha/query/kernel"].quantizer.codebook.values.tolist() == [-1.0, 1.0]
    log_scale = found["bidi/backward/kernel"].variables["log_scale"]
    assert tuple(log_scale.shape) == (1, 6)  # one per gate unit: 3 gates x 2 units


@check("layer_types_train_strip_save")
def _train():
    qat = DATA["qat"]
    x, y = data()
    before = {v.path: npy(v.value).copy() for v in qat.trainable_variables}
    gru_kernel = next((v, s) for la, w, v, s in k3.items(qat) if (la, w) == ("gru", "kernel"))
    codes_before = codes(*gru_kernel)
    compile_for_backend(qat, 0.1)
    hist = qat.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    for layer, weight, var, state in k3.items(qat):
        name = f"{layer}/{weight}"
        assert not np.array_equal(before[var.path], npy(var.value)), f"{name} did not train"
        if not isinstance(state.quantizer, core_quantizers.Int8WeightQuantizer):
            lat = npy(var.value)
            assert lat.min() >= state.quantizer.codebook.low - 1e-6, name
            assert lat.max() <= state.quantizer.codebook.high + 1e-6, name
    changed = np.mean(codes(*gru_kernel) != codes_before)
    print(f"GRU kernel: {changed:.0%} of its codebook values changed", file=sys.stderr)
    assert changed > 0, "training did not change the GRU's projected kernel"
    plain = td.strip_quantization(qat)
    assert not any(isinstance(la, td.keras3.QuantizeWrapper) for la in plain.layers)
    out = run(qat, x)
    np.testing.assert_allclose(run(plain, x), out, atol=1e-5, rtol=1e-5)
    DATA["out"] = out
    for layer, weight, var, state in k3.items(qat):
        want = k3.projected(state, var.value)
        stripped = plain.get_layer(layer)
        path = {s.name: s.path for s in td.keras3.wrapper.weight_specs(stripped)}[weight]
        owner, attr = configs.resolve(stripped, path)
        np.testing.assert_array_equal(npy(getattr(owner, attr)), want, err_msg=f"{layer}/{weight}")
        assert_on_codebook(state, var.value, want)
    # The check above can fail: with the latent weights, the outputs differ.
    for wrapper in qat.layers:
        if isinstance(wrapper, td.keras3.QuantizeWrapper):
            plain.get_layer(wrapper.layer.name).set_weights(wrapper.layer.get_weights())
    assert np.abs(run(plain, x) - out).max() > 1e-3, "the QAT model computes with latent weights"
    path = OUT / "layers.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    if BACKEND != "jax":  # (a third compilation on JAX; the projections below suffice)
        np.testing.assert_array_equal(run(loaded, x), out)
    for (la, w, v, s), (_, _, v2, s2) in zip(k3.items(qat), k3.items(loaded), strict=True):
        want = k3.projected(s, v.value)
        np.testing.assert_array_equal(k3.projected(s2, v2.value), want, err_msg=f"{la}/{w}")


def _masking():
    """An Embedding's mask reaches a wrapped GRU through the wrappers."""

    def model(mask_zero):
        inp = keras.Input((5,), dtype="int32")
        h = L.Embedding(10, 4, mask_zero=mask_zero, name="emb")(inp)
        return keras.Model(inp, L.Dense(2, name="out")(L.GRU(3, name="gru")(h)))

    x = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]], "int32")
    qat = td.quantize_model(model(True), td.ternary())
    weights = td.strip_quantization(qat).get_weights()
    masked, unmasked = model(True), model(False)
    masked.set_weights(weights)
    unmasked.set_weights(weights)
    np.testing.assert_allclose(npy(qat(x)), npy(masked(x)), atol=1e-6)
    assert np.abs(npy(unmasked(x)) - npy(masked(x))).max() > 1e-4  # the mask matters


if BACKEND != "jax":  # (eager calls; the wrapper's masks do not depend on the backend)
    passes("masks_reach_wrapped_layers", _masking)


@check("parity_with_tf_keras")
def _parity():
    """The trained model's tf_keras twin (`td.to_tf_keras`: TF-MOT wrappers of
    the same quantizers, latent weights, learned scales and 8-bit ranges)
    names the same weights, projects each to what this backend projects it
    to, and computes the same outputs."""
    qat = DATA["qat"]
    twin = td.to_tf_keras(qat)
    assert isinstance(twin, td.keras.Model)
    items = weights.codebook_items(twin) + weights.int8_items(twin)
    theirs = {it.label: it.quantizer(it.latent, False, weights=it.qvars).numpy() for it in items}
    mine = {f"{la}/{w}": k3.projected(s, v.value) for la, w, v, s in k3.items(qat)}
    assert set(theirs) == set(mine) == QUANTIZED, sorted(set(theirs) ^ set(mine))
    for name, want in theirs.items():
        if BACKEND == "tensorflow":
            np.testing.assert_array_equal(mine[name], want, err_msg=name)
        else:
            # A channel's mean|w| (summed in another order) and a learned
            # scale (XLA's or PyTorch's exp) may each be one ulp off
            # TensorFlow's. The projection is `(v x mean|w|) x (s / mean|w|)`:
            # mean|w|'s error cancels, s's (1 ulp) stays, and each side's three
            # roundings (half an ulp each) may differ: at most 4 ulp apart
            # (a CI run measured 3 on PyTorch).
            try:
                np.testing.assert_array_max_ulp(mine[name], want, maxulp=4)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
    x, _ = data()
    np.testing.assert_allclose(twin(x).numpy(), DATA["out"], atol=1e-5)
    DATA["twin"] = twin


def _export():
    import tflite_export  # noqa: PLC0415  (only with --export)

    x, y = data()
    inp = keras.Input((4, 3))
    h = L.GRU(4, **SEQ, name="gru")(inp)
    a = L.MultiHeadAttention(2, 2, **ZERO, name="mha")(h, h)
    model = keras.Model(inp, L.Dense(2, **ZERO, name="out")(L.Flatten()(a)), name="gru_attention")
    randomize(model, seed=2)
    qat = td.quantize_model(model, td.ternary())
    compile_for_backend(qat, 0.05)
    qat.fit(x[:, :4], y, batch_size=8, epochs=1, verbose=0)
    names = ["gru/kernel", "gru/recurrent_kernel"]
    names += [f"mha/{p}/kernel" for p in ("query", "key", "value", "attention_output")]
    for fmt in ("int8", "int4"):
        report = tflite_export.export(qat, OUT / f"{fmt}.tflite", format=fmt)
        assert report.ok and report.exact, report
        exported = [w.name for w in report.weights]
        assert all(n in exported for n in names), exported


def _summary():
    table = td.summary(DATA["twin"], print_fn=None)  # as `td.summary(qat)`, rebuilt once
    for name in QUANTIZED:
        assert f"{name} " in table, (name, table)
    assert "lstm/recurrent_kernel" in table and "float" in table, table


if __name__ == "__main__":
    if "--summary" in sys.argv:
        passes("summary", _summary)
    if "--export" in sys.argv:
        passes("export_gru_attention_int8_int4_exact", _export)
    (OUT / "checks.json").write_text(json.dumps({"backend": BACKEND, "passed": PASSED}))
