"""Bad input, numerics (mixed precision, fuzzing, property-based export
exactness) and interrupted exports."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import verify
from tfmot_discrete import keras
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk import ops
from tfmot_discrete.tfk.weights import wrapper_weights

L = keras.layers

# --- Codebook fuzzing ---------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(any_float, max_size=12),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True), max_size=20),
)
def test_codebook_fuzz_only_documented_errors_and_members(values, xs):
    try:
        cb = Codebook(values)
    except ValueError as e:
        assert "Received:" in str(e)
        return
    out = cb.project_numpy(xs)
    assert np.isin(out, cb.values).all()
    if xs:
        np.testing.assert_array_equal(cb.project_numpy(out), out)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=10),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=30),
)
def test_tf_projection_fuzz_is_always_a_member(values, xs):
    try:
        q = td.CodebookQuantizer(values)
    except ValueError as e:
        assert "Received:" in str(e)
        return
    out = ops.project(tf.constant(xs, tf.float32), q.values).numpy()
    assert np.isin(out, q.values.astype(np.float32)).all()


@pytest.mark.parametrize(
    "values, match",
    [
        (tf.constant([[1.0, -1.0], [0.5, -0.5]]), "one-dimensional"),
        ([1e300, -1e300], "float32"),
        ([1e-46, 2e-46, 1.0], "float32"),
        (list(range(70000)), "at most 65536"),
        ([1, "2"], "real number"),
        ({"a": 1}, "real number"),
    ],
)
def test_bad_codebooks_name_what_they_got(values, match):
    with pytest.raises(ValueError, match=match) as err:
        td.CodebookQuantizer(values)
    assert "Received: values=" in str(err.value)


# --- mixed precision ------------------------------------------------------------


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "q",
    [td.CodebookQuantizer([1, -1, 0.5, -0.5]), td.binary(scale="learned"), td.ternary()],
    ids=["four", "binary_learned", "ternary"],
)
def test_mixed_float16_trains_and_keeps_the_codebook(mixed_precision, q):
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="d0")(inp)
    x = td.DiscreteMultiplier([1, -1, 0.5, -0.5], name="mult")(x)
    out = L.Dense(3, name="d1", dtype="float32")(x)
    qat = td.quantize_model(keras.Model(inp, out), q)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)), rng.normal(size=(64, 3))
    qat.compile(keras.optimizers.Adam(0.01), "mse")
    hist = qat.fit(x, y, epochs=2, verbose=0)
    assert all(math.isfinite(v) for v in hist.history["loss"])
    weight, quantizer, qvars = wrapper_weights(qat.layers[1])[0]
    assert weight.dtype == tf.float32
    projected = quantizer(weight, False, weights=qvars)
    assert projected.dtype == tf.float32  # projected in the variable's dtype
    scale = quantizer.quantized_scale(weight, qvars)
    codes = projected.numpy() / scale
    np.testing.assert_allclose(codes, q.codebook.project_numpy(codes), atol=1e-6)
    assert set(np.unique(qat.get_layer("mult").quantized_kernel().numpy())) <= {1, -1, 0.5, -0.5}


# --- property-based export exactness ------------------------------------------


@st.composite
def lattice_codebooks(draw):
    qmax = draw(st.sampled_from([7, 127]))
    k = draw(st.integers(2, 5))
    codes = draw(st.lists(st.integers(-qmax, qmax), min_size=k, max_size=k, unique=True))
    unit = draw(st.floats(0.01, 3.0))
    return qmax, [c * unit for c in codes]


def _layer_model(draw_kind, a, b):
    if draw_kind == "dense":
        inp = keras.Input((a,))
        out = L.Dense(b, name="layer")(inp)
    else:
        inp = keras.Input((6, 6, a))
        out = L.Flatten()(L.Conv2D(b, 3, name="layer")(inp))
    return keras.Model(inp, out)


# Each example converts a model: no shrinking (it would convert hundreds), and
# the same examples every run (a CI run cannot afford to explore).
_EXPORT_SETTINGS = dict(
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@settings(max_examples=8, **_EXPORT_SETTINGS)
@given(
    lattice_codebooks(),
    st.sampled_from([None, "mean_abs"]),
    st.sampled_from(["dense", "conv"]),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(0, 2**16),
)
def test_lattice_codebooks_always_export_exactly(tmp_path_factory, book, scale, kind, a, b, seed):
    qmax, values = book
    if len(set(values)) < 2:
        return
    keras.utils.set_random_seed(seed)
    q = td.CodebookQuantizer(values, scale=scale)
    qat = td.quantize_model(_layer_model(kind, a, b), {"layer": q})
    w = wrapper_weights(qat.get_layer("quant_layer"))[0][0]
    rng = np.random.default_rng(seed)
    w.assign(rng.uniform(min(values), max(values), size=w.shape).astype("float32"))
    fmt = "int4" if qmax == 7 else "int8"
    path = tmp_path_factory.mktemp("lattice") / "m.tflite"
    report = tflite_export.export(qat, path, format=fmt)
    assert report.exact and report.ok
    checks = verify.check_codebook_file(path.read_bytes(), q.codebook)
    assert checks and all(c.exact for c in checks)


@settings(max_examples=5, **_EXPORT_SETTINGS)
@given(st.lists(st.floats(0.05, 3.0), min_size=2, max_size=4, unique=True), st.integers(0, 2**16))
def test_off_lattice_codebooks_are_refused_or_reported(tmp_path_factory, base, seed):
    values = [v * math.sqrt(2) if i == 0 else v for i, v in enumerate(base)] + [-base[-1]]
    cb = Codebook(values)
    if cb.integer_step(127) is not None:
        return  # happens to sit on a lattice after all
    qat = td.quantize_model(_layer_model("dense", 3, 4), {"layer": td.CodebookQuantizer(values)})
    path = tmp_path_factory.mktemp("off") / "m.tflite"
    for fmt in ("int4", "int8"):
        with pytest.raises(tflite_export.ExportError, match="no exact"):
            tflite_export.export(qat, path, format=fmt)
        assert not path.exists()
    report = tflite_export.export(qat, path, format="int8", allow_inexact=True)
    assert path.exists()
    assert any("no exact int8 lattice; written inexact" in n for n in report.notes)
    # Exact or not is then a matter of the values the weights actually use.
    for w in report.weights:
        assert w.exact == (w.max_error <= 1e-5 * max(1.0, max(abs(v) for v in values)))


# --- export input checks and interruptions --------------------------------------


def _saved_qat(tmp_path):
    inp = keras.Input((6,))
    out = L.Dense(3, name="d")(inp)
    qat = td.quantize_model(keras.Model(inp, out), td.binary())
    path = tmp_path / "qat.keras"
    qat.save(path)  # saved outside any scope
    return path


def test_qat_model_saved_without_scope_exports(tmp_path, capsys):
    path = _saved_qat(tmp_path)
    assert cli.main([str(path), "-o", str(tmp_path / "m.tflite"), "--format", "int4"]) == 0
    assert "exact" in capsys.readouterr().out


def test_lambda_layer_needs_unsafe(tmp_path, capsys):
    inp = keras.Input((6,))
    x = L.Lambda(lambda t: t * 2.0, name="double")(inp)
    out = L.Dense(3, name="d")(x)
    qat = td.quantize_model(keras.Model(inp, out), td.binary())
    path = tmp_path / "lambda.keras"
    qat.save(path)
    out_path = tmp_path / "m.tflite"
    assert cli.main([str(path), "-o", str(out_path), "--format", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--unsafe" in err and not out_path.exists()
    assert cli.main([str(path), "-o", str(out_path), "--format", "int8", "--unsafe"]) == 0
    assert out_path.exists()


def _kill_after(code, delay):
    """Runs `code` in a new interpreter and SIGKILLs it `delay` s after it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_export_killed_midway_leaves_nothing_or_the_previous_file(tmp_path):
    model_path = _saved_qat(tmp_path)
    target = tmp_path / "m.tflite"
    cli.main([str(model_path), "-o", str(target), "--format", "int8"])
    good = target.read_bytes()
    code = (
        "import sys; from tflite_export import __main__ as cli\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        f"    cli.main([{str(model_path)!r}, '-o', {str(target)!r}, '--format', 'int8'])\n"
    )
    # Exports run back to back; SIGKILL lands at a different point each time.
    for delay in (0.5, 2.0, 3.5, 5.0):
        _kill_after(code, delay)
        assert target.read_bytes() == good  # never a partial or a different file
    target.unlink()
    _kill_after(code, 1.0)
    assert not target.exists() or target.read_bytes() == good
