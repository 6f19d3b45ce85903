"""Learned codebook values on Keras 3, on one backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_learned_worker.py OUT_DIR

Trains a small Conv/Dense model with `learn_values=True` and checks that the
values moved and stayed sorted, distinct and on their grid (bit for bit the
values NumPy computes from the trained vector), that each value's gradient is
the sum of the upstream gradient over the entries assigned to it, that the
stripped weights are exactly the learned values times the channel scale, that
a `.keras` file reloads them, and that an int8 file stores them exactly;
the same for a `DiscreteMultiplier` with learned values.
Writes `OUT_DIR/ok` (the backend's name) when every check passed.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tfmot_discrete as td
from tfmot_discrete.core import learned
from tfmot_discrete.keras3 import ops as qops

ops = keras.ops
BACKEND = keras.backend.backend()


def npy(t):
    return np.asarray(ops.convert_to_numpy(t))


def value_gradient():
    """`project_learned`'s value gradient against the NumPy sum."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.2, 1.2, size=(40, 4)).astype("float32")
    v = learned.project_values([-1.0, -0.25, 0.5, 1.0])
    s = np.array([[0.5, 1.0, 2.0, 1.5]], "float32")
    up = rng.normal(size=(40, 4)).astype("float32")

    def loss(vv):
        y = qops.project_learned(ops.convert_to_tensor(x), vv, -1.0, 1.0, "ste", scale=s)
        return ops.sum(y * up)

    if BACKEND == "jax":
        import jax  # noqa: PLC0415

        dv = np.asarray(jax.grad(loss)(ops.convert_to_tensor(v)))
    else:
        import tensorflow as tf  # noqa: PLC0415

        vv = tf.Variable(v)
        with tf.GradientTape() as tape:
            out = loss(vv)
        dv = tape.gradient(out, vv).numpy()
    idx = np.searchsorted((v[:-1] + v[1:]) / 2, x / s, side="right")
    want = np.array([(up * s)[idx == i].sum() for i in range(v.size)])
    np.testing.assert_allclose(dv, want, rtol=1e-4, atol=1e-4)


def main(out_dir: pathlib.Path) -> None:
    value_gradient()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean((1, 2, 3)) > x[:, 4:].mean((1, 2, 3))).astype("int32")
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="dense"),
            keras.layers.ReLU(),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs", learn_values=True)
    qat = td.quantize_model(model, q)
    qat.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    qat.fit(x, y, batch_size=32, epochs=2, verbose=0)
    items = td.keras3.quantize.items(qat)
    assert len(items) == 3, items
    learned_values = {}
    for layer, _weight, _var, state in items:
        raw = npy(state.variables["values"])
        assert np.all(np.diff(raw) > 0), (layer, raw)  # the constraint keeps it sorted
        v = state.quantizer.codebook_of(state.variables).values
        assert not np.array_equal(v, q.values), (layer, v)  # the values trained
        codes = v / learned.grid_step(v)
        assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127, v
        np.testing.assert_array_equal(npy(qops.project_values(raw)), learned.project_values(raw))
        learned_values[layer] = v
    plain = td.strip_quantization(qat)
    for layer, weight, var, state in items:
        stripped = {w.name: npy(w.value) for w in plain.get_layer(layer).weights}[weight]
        scale = npy(td.keras3.quantizers.scale_of(state, var.value)).astype("float32")
        v = learned_values[layer].astype("float32")
        idx = np.argmin(np.abs(stripped[..., None] / scale[..., None] - v), axis=-1)
        np.testing.assert_array_equal(stripped, v[idx] * scale, err_msg=layer)
    table = td.summary(qat, print_fn=None)
    for v in learned_values.values():
        assert td.core.text.format_values(v) in table, table
    path = out_dir / "learned.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(npy(loaded(x)), npy(qat(x)))
    import tflite_export  # noqa: PLC0415

    report = tflite_export.export(qat, out_dir / "learned.tflite", format="int8")
    assert report.ok and report.exact, report
    for check in report.to_dict()["weights"]:
        layer = check["name"].split("/")[0]
        assert check["codebook"] == learned_values[layer].tolist(), (check, learned_values)
        assert check["max_error"] == 0.0, check
    multiplier(out_dir)
    (out_dir / "ok").write_text(BACKEND)


def multiplier(out_dir: pathlib.Path) -> None:
    """A `td.keras3.DiscreteMultiplier` with learned values: they train, the
    stripped vector and an int8 file hold exactly them."""
    import tflite_export  # noqa: PLC0415

    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 16)).astype("float32")
    gain = rng.choice([1.0, -1.0, 0.3, -0.3], size=16).astype("float32")
    y = (x * gain) @ rng.normal(size=(16, 4)).astype("float32")
    keras.utils.set_random_seed(5)
    inp = keras.Input((16,))
    q = td.CodebookQuantizer([1, -1, 0.5, -0.5], learn_values=True)
    out = keras.layers.Dense(4, name="d")(td.keras3.DiscreteMultiplier(q, name="mult")(inp))
    qat = td.quantize_model(keras.Model(inp, out), {"d": td.ternary()})
    qat.compile(keras.optimizers.Adam(0.02), "mse")
    qat.fit(x, y, epochs=10, batch_size=64, verbose=0)
    mult = qat.get_layer("mult")
    values = mult.quantizer.codebook_of(mult.state.variables).values
    assert not np.array_equal(values, q.values) and np.all(np.diff(values) > 0), values
    vector = npy(mult.quantized_kernel())
    assert set(vector.tolist()) <= set(values.astype("float32").tolist()), (vector, values)
    plain = td.strip_quantization(qat)
    np.testing.assert_array_equal(npy(plain.get_layer("mult").quantized_kernel()), vector)
    report = tflite_export.export(qat, out_dir / "mult.tflite", format="int8")
    assert report.ok and report.exact, report
    check = {w["name"]: w for w in report.to_dict()["weights"]}["mult/kernel"]
    assert check["codebook"] == values.tolist() and check["max_error"] == 0.0, check


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
