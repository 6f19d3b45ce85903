"""Keras 3 models: trained to a codebook on the TensorFlow, JAX and PyTorch
backends (each in its own process), the same projection as the tf_keras path
bit for bit, rebuilt in tf_keras on request, exported exactly."""

import pathlib

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
from keras3_cases import parity_cases, passed_checks, run_workers

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import int8

WORKER = pathlib.Path(__file__).with_name("keras3_worker.py")
#: The flags of each backend's worker: the full layer table on TensorFlow and
#: PyTorch; on JAX (where each eager operation on a new shape compiles) one
#: layer of each kind, and the export of a JAX-trained model.
BACKENDS = {
    "tensorflow": ["--summary"],
    "torch": ["--torch-chain"],
    "jax": ["--small", "--export"],
}
CHECKS = {
    "projection_in_codebook_and_exact",
    "ties_go_up_and_nan_spreads",
    "gradients_straight_through",
    "stochastic_rounding_unbiased",
    "int8_codes_and_steps",
    "layer_table_trains_strips_saves",
    "discrete_multiplier_learns_the_sign",
    "parity_weights",
}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The three backends' workers, run side by side: `{backend: (rc, stderr, dir)}`."""
    return run_workers(WORKER, BACKENDS, tmp_path_factory)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_quantizer_and_layer_tables_pass_on_backend(workers, backend):
    want = set(CHECKS)
    want |= {"summary"} if "--summary" in BACKENDS[backend] else set()
    want |= {"export_int8_exact"} if "--export" in BACKENDS[backend] else set()
    want |= (
        {"torch_chain_is_the_keras_ops_chain"} if "--torch-chain" in BACKENDS[backend] else set()
    )
    assert passed_checks(workers, backend) == want


def _tf_keras_projection(q, w):
    """The tf_keras path's projection of `w` as a Dense kernel (learned scale 1)."""
    t = tf.constant(w)
    if isinstance(q, str):
        q8 = int8.quantizer_for([-1])
        qvars = {
            "min_var": tf.Variable(tf.zeros(w.shape[-1])),
            "max_var": tf.Variable(tf.zeros(w.shape[-1])),
        }
        q8(t, True, weights=qvars)  # sets the range, as quantize_model does
        return q8(t, False, weights=qvars).numpy()
    q = q.with_channel_axes([-1])
    qvars = {}
    if q.scale == "learned":
        qvars = {
            "log_scale": tf.Variable(tf.zeros(q.scale_shape(w.shape))),
            "scale_initialized": tf.Variable(1.0),
        }
    if q.learn_values:
        qvars["values"] = tf.Variable(q.initial_values())
    return q(t, False, weights=qvars).numpy()


def test_same_latent_weights_project_to_the_same_bits_on_every_backend(workers):
    results = {}
    for backend, (rc, stderr, out) in workers.items():
        assert rc == 0, stderr[-4000:]
        with np.load(out / "parity.npz") as f:
            results[backend] = {k: f[k] for k in f.files}
    cases = parity_cases()
    assert len(cases) >= 20
    for key, q, w in cases:
        want = _tf_keras_projection(q, w)
        assert np.unique(want).size >= 2, key  # not a degenerate case
        for backend, got in results.items():
            if backend == "jax" and not isinstance(q, str) and q.scale is not None:
                # XLA's float32 division on CPU is not correctly rounded: a
                # channel's mean|w| may be one ulp off (the codebook choice is not).
                np.testing.assert_array_max_ulp(got[key], want, maxulp=1)
                continue
            np.testing.assert_array_equal(got[key], want, err_msg=f"{backend}: {key}")


def _functional3():
    inp = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras3.layers.BatchNormalization(name="bn")(x)
    x = keras3.layers.ReLU()(x)
    a = keras3.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    b = keras3.layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)
    x = keras3.layers.Add()([a, b])
    x = keras3.layers.GlobalAveragePooling2D()(x)
    x = keras3.layers.Dropout(0.1)(x)
    out = keras3.layers.Dense(3, activation="softmax", name="dense")(x)
    return keras3.Model(inp, out, name="k3")


def test_keras3_model_in_keras3_model_out_trains_with_a_keras3_optimizer():
    m3 = keras3.Sequential(
        [keras3.Input((5,)), keras3.layers.Dense(4, name="a"), keras3.layers.Dense(2, name="b")]
    )
    qat = td.quantize_model(m3, td.binary())
    assert isinstance(qat, keras3.Model)
    assert [layer.name for layer in qat.layers] == ["quant_a", "quant_b"]
    qat.compile(keras3.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    qat.fit(x, np.zeros((4, 2), "float32"), verbose=0)
    kernel = td.strip_quantization(qat).get_layer("a").kernel.numpy()
    assert set(np.unique(kernel)) <= {-1.0, 1.0}


def test_to_tf_keras_rebuilds_a_float_model_with_identical_weights():
    m3 = _functional3()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    m2 = td.to_tf_keras(m3)
    assert isinstance(m2, keras.Model)
    assert [layer.name for layer in m2.layers] == [layer.name for layer in m3.layers]
    np.testing.assert_allclose(m2(x).numpy(), m3(x).numpy(), atol=1e-6)


def test_to_tf_keras_of_a_qat_model_is_the_same_qat_model():
    m3 = _functional3()
    q = td.quantize_model(m3, {"dw": td.ternary(scale="learned"), "sep|dense": td.binary()})
    log_scale = q.get_layer("quant_dw").states[0][1].variables["log_scale"]
    log_scale.assign(log_scale.numpy() + 0.5)  # as if trained: the twin must copy it
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    twin = td.to_tf_keras(q)
    assert isinstance(twin, keras.Model)
    np.testing.assert_allclose(twin(x).numpy(), q(x).numpy(), atol=1e-6)
    plain3, plain2 = td.strip_quantization(q), td.strip_quantization(twin)
    for name in ("dw", "sep", "dense"):
        for w3, w2 in zip(
            plain3.get_layer(name).get_weights(), plain2.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(w3, w2, err_msg=name)


def test_keras3_float_model_and_qat_file_export_and_a_custom_layer_converts_natively(tmp_path):
    m3 = keras3.Sequential([keras3.Input((5,)), keras3.layers.Dense(3, name="a")])
    report = tflite_export.export(m3, tmp_path / "f.tflite", format="float")
    assert report.ok and report.max_abs_diff < 1e-5
    # A Keras 3 QAT model saved as .keras: the file alone is enough.
    td.quantize_model(m3, td.ternary()).save(tmp_path / "qat.keras")
    report = tflite_export.export(tmp_path / "qat.keras", tmp_path / "q.tflite", format="int8")
    assert report.ok and report.exact and [w.name for w in report.weights] == ["a/kernel"]

    class Scale(keras3.layers.Layer):
        def build(self, input_shape):
            self.k = self.add_weight(shape=(input_shape[-1],))

        def call(self, x):
            return x * self.k

    # tf_keras cannot rebuild it: converted from Keras 3 as it is, and the report says why.
    custom = keras3.Sequential([keras3.Input((5,)), Scale(name="mult"), keras3.layers.Dense(2)])
    report = tflite_export.export(custom, tmp_path / "b.tflite", format="float")
    assert report.ok and report.max_abs_diff < 1e-5
    assert any("converted from Keras 3" in n and "'mult'" in n for n in report.notes)


def test_unbridgeable_layer_is_named_and_legacy_keras_explained():
    class LearnableMultiplier(keras3.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1],))

        def call(self, x):
            return x * self.kernel

    m3 = keras3.Sequential(
        [keras3.Input((5,)), LearnableMultiplier(name="mult"), keras3.layers.Dense(2)]
    )
    with pytest.raises(ValueError) as err:
        td.to_tf_keras(m3)
    msg = str(err.value)
    assert "'mult'" in msg and "LearnableMultiplier" in msg and "TF_USE_LEGACY_KERAS=1" in msg
    with pytest.raises(ValueError, match="'mult'.*cannot be quantized"):
        td.quantize_model(m3, {"mult": td.binary()})


def test_keras3_only_setting_is_refused_by_the_rebuild():
    m3 = keras3.Sequential([keras3.Input((5,)), keras3.layers.Dense(4, name="a")])
    m3.layers[0].enable_lora(2)
    with pytest.raises(ValueError, match="'a'.*lora_rank=2.*TF_USE_LEGACY_KERAS=1"):
        td.to_tf_keras(m3)


def test_keras3_arguments_are_checked():
    m3 = keras3.Sequential([keras3.Input((5,)), keras3.layers.Dense(4, name="a")])
    with pytest.raises(ValueError, match=r"`activations` must be one of \[None, 'int8'\]"):
        td.quantize_model(m3, td.binary(), activations="uint8")
    with pytest.raises(ValueError, match="'nothing' matches no layer"):
        td.quantize_model(m3, {"nothing": td.binary()})

    class Sub(keras3.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"'sub'.*is not built.*call it on a batch"):
        td.quantize_model(Sub(), td.binary())
    with pytest.raises(ValueError, match=r"`in_place` must be a bool"):
        td.quantize_model(m3, td.binary(), in_place=1)
    with pytest.raises(ValueError, match=r"`in_place=True` is for models.*Sequential"):
        td.quantize_model(m3, td.binary(), in_place=True)
