"""8-bit activations on Keras 3 (`quantize_model(..., activations="int8")`):
TensorFlow's fake quantization and TF-MOT's range tracking on every backend,
put where the tf_keras path puts them, and the ranges a model trained (on
TensorFlow or JAX) are the scales of its full-integer file."""

import json
import pathlib

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from keras3_cases import (
    activation_cases,
    activation_model,
    passed_checks,
    run_fresh,
    run_workers,
)

import tflite_export
import tfmot_discrete as td
from tflite_export import runners
from tfmot_discrete.keras3.activations import ActivationQuantizer, fake_quant

pytestmark = pytest.mark.skipif(
    keras3.backend.backend() != "tensorflow",
    reason="in-process Keras 3 tests run on the TensorFlow backend",
)
L = keras3.layers
WORKER = pathlib.Path(__file__).with_name("keras3_activations_worker.py")
_qk = tfmot.quantization.keras


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The JAX and PyTorch workers, run side by side."""
    return run_workers(WORKER, {"jax": [], "torch": []}, tmp_path_factory)


def _tf_fake_quant(x, g, lo, hi):
    """TensorFlow's own operation on `x`, and the gradient of its sum times `g`."""
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = tf.quantization.fake_quant_with_min_max_vars(t, lo, hi, num_bits=8)
        loss = tf.reduce_sum(y * g)
    return y.numpy(), tape.gradient(loss, t).numpy()


def test_fake_quant_is_tensorflows_on_every_backend(workers):
    x, g, ranges, _ = activation_cases()
    want = [_tf_fake_quant(x, g, lo, hi) for lo, hi in ranges]
    want_values = np.stack([v for v, _ in want])
    want_grads = np.stack([d for _, d in want])
    assert 0 < (want_grads == 0).mean() < 1  # clamped entries: no gradient
    here = np.stack([keras3.ops.convert_to_numpy(fake_quant(x, lo, hi)) for lo, hi in ranges])
    np.testing.assert_array_equal(here, want_values)
    for backend in ("jax", "torch"):
        assert passed_checks(workers, backend) == {"all"}
        got = np.load(workers[backend][2] / "fake_quant.npz")
        _assert_equal_but_ties(got["values"], want_values, x, ranges, backend)
        np.testing.assert_array_equal(got["grads"], want_grads, err_msg=backend)


def _assert_equal_but_ties(got, want, x, ranges, backend):
    """`got` is `want` bit for bit, except that an input halfway between two
    levels may take the other one (XLA on JAX turns the division by the step
    into a multiplication by its inverse, rounded once more)."""
    for g, w, (lo, hi) in zip(got, want, ranges):
        scale = np.float32(hi - lo) / np.float32(255)
        start = -np.floor(-lo / scale + 0.5) * scale
        steps = (np.clip(x, start, start + 255 * scale) - start) / scale
        tie = np.abs(steps % 1 - 0.5) < 1e-4
        np.testing.assert_array_equal(g[~tie], w[~tie], err_msg=backend)
        assert np.all(np.abs(g[tie] - w[tie]) <= scale * 1.0001), backend


def _tf_mot_ranges(quantizer, batches):
    """TF-MOT's quantizer on `batches` in training: its range after each, and its last output."""
    holder = tf.keras.layers.Layer()  # (TF-MOT makes its variables on a layer: any will do)
    qvars = quantizer.build(tf.TensorShape(batches[0].shape), "act", holder)
    seen = []
    for batch in batches:
        last = quantizer(tf.constant(batch), True, weights=qvars)
        seen.append([float(qvars["min_var"].numpy()), float(qvars["max_var"].numpy())])
    return np.array(seen), last.numpy()


@pytest.mark.parametrize(
    ("tracking", "quantizer"),
    [
        ("moving_average", _qk.quantizers.MovingAverageQuantizer(8, False, False, False)),
        ("all_values", _qk.quantizers.AllValuesQuantizer(8, False, False, False)),
    ],
)
def test_ranges_track_as_tf_mot_on_every_backend(workers, tracking, quantizer):
    _, _, _, batches = activation_cases()
    want, want_last = _tf_mot_ranges(quantizer, batches)
    layer = ActivationQuantizer(tracking)
    here = []
    for batch in batches:
        last = layer(batch, training=True)  # (the batches move every range)
        here.append([float(layer.range_min.value), float(layer.range_max.value)])
    np.testing.assert_allclose(here, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(keras3.ops.convert_to_numpy(last), want_last)
    assert not np.allclose(want[-1], [-6.0, 6.0])  # the batches moved the range
    for backend in ("jax", "torch"):
        got = np.load(workers[backend][2] / "ranges.npz")
        np.testing.assert_allclose(got[tracking], want, rtol=1e-6, atol=1e-7, err_msg=backend)
        np.testing.assert_array_equal(got[tracking + "/last"], want_last, err_msg=backend)


def test_inference_keeps_the_range():
    layer = ActivationQuantizer()
    layer(np.full((4,), 100.0, "float32"), training=False)
    assert (float(layer.range_min.value), float(layer.range_max.value)) == (-6.0, 6.0)


def _placement_model():
    """Every case of the placement rule: a Conv fused into BatchNorm and that
    into ReLU, a Dense with its own activation, a Dense fused into an
    `Activation("relu")`, a layer with two consumers, Add, attention (its
    output stays float), and layers that keep their input's scale: after an
    8-bit output (Flatten: no range of its own) and after attention's float
    output (Dropout: quantized)."""
    inp = keras3.Input((6, 4), name="x")
    c = L.Conv1D(4, 3, padding="same", name="conv")(inp)
    r = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(c))
    d = L.Activation("relu", name="act")(L.Dense(4, name="dense")(r))
    a = L.Dropout(0.1, name="drop")(L.MultiHeadAttention(2, 2, name="mha")(d, d))
    s = L.Add(name="add")([a, d])
    h = L.Dense(5, activation="tanh", name="tanh")(L.Flatten(name="flat")(s))
    return keras3.Model(inp, L.Dense(3, name="logits")(h), name="placement")


def test_placed_where_the_tf_keras_path_places_them():
    keras3.utils.set_random_seed(0)
    model = _placement_model()
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    names = [layer.name for layer in qat.layers if isinstance(layer, ActivationQuantizer)]
    assert names == [
        "act_x",
        "act_relu",
        "act_act",
        "act_drop",
        "act_add",
        "act_tanh",
        "act_logits",
    ]
    # The tf_keras path's own rule on the same model: the twin's quantizers
    # are at the same places (`to_tf_keras` raises otherwise), with the ranges.
    twin = td.to_tf_keras(qat)
    outputs = sorted(
        layer.layer.name for layer in twin.layers if getattr(layer, "_output_quantizers", None)
    )
    assert outputs == sorted(n[len("act_") :] for n in names[1:])
    x = np.random.default_rng(0).normal(size=(8, 6, 4)).astype("float32")
    np.testing.assert_allclose(twin(x), qat(x), atol=1e-5)


@pytest.fixture(scope="module")
def trained_here():
    """The activation model with 8-bit activations trained 3 steps here (TF
    backend, jit): `(qat, x, {quantizer name: [min, max]})`."""
    keras3.utils.set_random_seed(0)
    model, x, y = activation_model(keras3)
    qat = td.quantize_model(model, {"conv|logits": "int8", ".*": td.ternary()}, activations="int8")
    qat.compile(keras3.optimizers.Adam(1e-2), "mse", jit_compile=True)
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    ranges = {
        layer.name: [float(layer.range_min.value), float(layer.range_max.value)]
        for layer in qat.layers
        if isinstance(layer, ActivationQuantizer)
    }
    return qat, x, ranges


def _scale_and_zero_point(lo, hi):
    """TFLite's int8 (scale, zero point) of the nudged range `[lo, hi]`."""
    scale = (hi - lo) / 255
    return scale, int(np.floor(-lo / scale + 0.5)) - 128


def _assert_file_takes_ranges(path, ranges, x):
    interpreter = runners.interpreter(pathlib.Path(path).read_bytes())
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    for detail, name in ((inp, "act_signal"), (out, "act_logits")):
        scale, zero_point = detail["quantization"]
        want_scale, want_zero = _scale_and_zero_point(*ranges[name])
        assert scale == pytest.approx(want_scale, rel=1e-6), name
        assert zero_point == want_zero, name
    assert len(x)


def test_trained_ranges_are_the_full_int8_files_scales(trained_here, tmp_path):
    qat, x, ranges = trained_here
    assert ranges["act_signal"] != [0.0, 0.0] and ranges["act_logits"] != [
        -6.0,
        6.0,
    ]  # `fit` moved them
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=x
    )
    assert report.exact
    assert report.agreement.trained_activations
    assert report.top1_agreement >= 0.995
    _assert_file_takes_ranges(tmp_path / "m.tflite", ranges, x)


def test_a_jax_trained_model_exports_with_its_ranges(workers, tmp_path):
    rc, stderr, out = workers["jax"]
    assert rc == 0, stderr[-4000:]
    ranges = json.loads((out / "ranges.json").read_text())
    data = np.load(out / "model.npz")
    qat = td.keras3.load_model(out / "model.keras")
    np.testing.assert_allclose(qat.predict(data["x"], verbose=0), data["predictions"], atol=1e-5)
    report = tflite_export.export(
        out / "model.keras",
        tmp_path / "m.tflite",
        format="full_int8",
        representative_data=data["x"],
    )
    assert report.exact and report.agreement.trained_activations
    _assert_file_takes_ranges(tmp_path / "m.tflite", ranges, data["x"])


def test_strip_save_and_load(trained_here, tmp_path):
    qat, x, _ = trained_here
    plain = td.strip_quantization(qat)
    assert not any(isinstance(layer, ActivationQuantizer) for layer in plain.layers)
    assert [layer.name for layer in plain.layers] == ["signal", "conv", "bn", "relu", "flat"] + [
        "hidden",
        "logits",
    ]
    qat.save(tmp_path / "qat.keras")
    again = keras3.saving.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), qat.predict(x, verbose=0))
    # A new process that imported only the package (its Keras 3 path loads on demand).
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "out.npy", qat.predict(x, verbose=0))
    code = (
        "import sys, numpy as np\nimport tfmot_discrete\nimport keras\n"
        "m = keras.saving.load_model(sys.argv[1] + '/qat.keras')\n"
        "got = m.predict(np.load(sys.argv[1] + '/x.npy'), verbose=0)\n"
        "np.testing.assert_array_equal(got, np.load(sys.argv[1] + '/out.npy'))\n"
        "print('predicts the same')\n"
    )
    assert "predicts the same" in run_fresh(code, str(tmp_path))


def test_sequential_models_keep_their_class():
    keras3.utils.set_random_seed(0)
    model = keras3.Sequential(
        [
            keras3.Input((5,), name="v"),
            L.Dense(4, activation="relu", name="a"),
            L.Dense(2, name="b"),
        ]
    )
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    assert isinstance(qat, keras3.Sequential)
    assert [layer.name for layer in qat.layers] == ["act_v", "quant_a", "act_a", "quant_b", "act_b"]


class _Subclassed(keras3.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


class _Own(L.Layer):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: _Subclassed(), ["Sequential and Functional", "_Subclassed"]),
        (
            lambda: keras3.Sequential([keras3.Input((3,)), _Own(name="own"), L.Dense(2)]),
            ["Keras's own layers", "'own'", "activations=None"],
        ),
    ],
)
def test_models_the_export_cannot_convert_are_refused(build, words):
    model = build()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="activations") as e:
        td.quantize_model(model, td.ternary(), activations="int8")
    for word in words:
        assert word in str(e.value)


def test_unknown_activations_value_is_refused():
    model = keras3.Sequential([keras3.Input((3,)), L.Dense(2)])
    with pytest.raises(ValueError, match=r"`activations` must be one of \[None, 'int8'\]"):
        td.quantize_model(model, td.ternary(), activations="int4")


def test_a_recurrent_model_trains_them_and_its_file_says_what_it_calibrated(tmp_path):
    """A GRU's gates and state run in the unrolled graph the file is
    converted from, where no training range exists: the layer outputs train
    their ranges, and the report says the file's were calibrated."""
    keras3.utils.set_random_seed(0)
    rng = np.random.default_rng(5)
    inp = keras3.Input((6, 3), name="seq")
    h = L.GRU(8, name="gru")(L.Conv1D(6, 3, activation="relu", name="conv")(inp))
    model = keras3.Model(inp, L.Dense(4, name="logits")(h))
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    assert [layer.name for layer in qat.layers if isinstance(layer, ActivationQuantizer)] == [
        "act_seq",
        "act_conv",
        "act_gru",
        "act_logits",
    ]
    x = rng.normal(size=(32, 6, 3)).astype("float32")
    qat.compile(keras3.optimizers.Adam(1e-2), "mse", run_eagerly=True)  # (two steps)
    qat.fit(x, rng.normal(size=(32, 4)).astype("float32"), batch_size=16, verbose=0)
    assert float(qat.get_layer("act_gru").range_max.value) != 6.0
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", format="full_int8", representative_data=x
    )
    assert report.exact and not report.agreement.trained_activations
    assert any("unrolled copy" in note for note in report.notes)


def test_align_biases_moves_the_keras3_models_own_biases(tmp_path):
    keras3.utils.set_random_seed(1)
    model, x, y = activation_model(keras3)
    qat = td.quantize_model(model, {"conv|logits": "int8", ".*": td.ternary()}, activations="int8")
    qat.compile(keras3.optimizers.Adam(1e-2), "mse", jit_compile=True)
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    beta = qat.get_layer("bn").beta.numpy().copy()
    # Enough inputs that some output lies within a bias rounding of a level
    # boundary (without the move, one is a step apart from the file's).
    x = np.random.default_rng(5).normal(scale=4.0, size=(1024, 16, 2)).astype("float32")
    report = tflite_export.export(
        qat, tmp_path / "q.tflite", format="full_int8", representative_data=x, align_biases=True
    )
    assert report.ok and report.agreement.biases_aligned
    assert not np.array_equal(qat.get_layer("bn").beta.numpy(), beta)
    data = (tmp_path / "q.tflite").read_bytes()
    step = runners.interpreter(data).get_output_details()[0]["quantization"][0]
    # The Keras 3 model itself (not only the tf_keras twin the file is
    # checked against) now computes the file's integers.
    assert np.abs(runners.run_litert(data, [x])[0] - qat.predict(x, verbose=0)).max() < step / 2
