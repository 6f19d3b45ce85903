import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfmot_discrete.core.codebook import FLOAT32_TINY, MAX_SIZE, Codebook
from tfmot_discrete.tfk import ops

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _accepted(values) -> bool:
    """Codebooks `Codebook` accepts: 2+ distinct values, none (and no midpoint) subnormal."""
    try:
        Codebook(values)
    except ValueError:
        return False
    return True


codebooks = st.lists(finite, min_size=2, max_size=40).filter(_accepted)


def test_order_and_duplicates_do_not_matter():
    assert Codebook([1, -1, 0.5, -0.5, 1, 1]) == Codebook([-0.5, 0.5, -1, 1])
    assert Codebook([3, 1, 2]).values.tolist() == [1.0, 2.0, 3.0]
    assert Codebook([0.0, -0.0, 1]).size == 2


@pytest.mark.parametrize(
    "values",
    [
        [],
        [1],
        [1, 1, 1.0],
        [float("nan"), 1],
        [float("inf"), 1],
        [1, -float("inf")],
        ["a", 1],
        [[1, 2], [3]],
        None,
        "abc",
        5,
        np.zeros((2, 2)),
        [True, False],
        np.array(["x", "y"]),
        list(range(MAX_SIZE + 1)),
    ],
    ids=[
        "empty",
        "one",
        "one_distinct",
        "nan",
        "inf",
        "neg_inf",
        "string_entry",
        "nested",
        "none",
        "string",
        "scalar",
        "matrix",
        "bools",
        "string_array",
        "too_many",
    ],
)
def test_bad_codebooks_raise(values):
    with pytest.raises(ValueError, match="Received: values="):
        Codebook(values)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ([0.0, 2.2e-311, -2.2e-311], "2.2e-311"),  # subnormal in float64 too
        ([1.0, 1e-39], "1e-39"),  # subnormal in float32 only
        ([0.0, FLOAT32_TINY], "midpoint"),  # the values are normal, their midpoint is not
    ],
)
def test_subnormal_float32_values_are_refused(values, named):
    with pytest.raises(ValueError, match="subnormal float32") as err:
        Codebook(values)
    assert named in str(err.value) and f"Received: values={values!r}" in str(err.value)


def test_smallest_normal_float32_values_project_alike_in_numpy_and_tensorflow():
    cb = Codebook([0.0, 2 * FLOAT32_TINY, -2 * FLOAT32_TINY, 1.0])
    x = np.concatenate([cb.midpoints, cb.values, [FLOAT32_TINY / 2, -FLOAT32_TINY / 2]])
    t = ops.project(tf.constant(x, tf.float64), cb.values).numpy()
    np.testing.assert_array_equal(t, cb.project_numpy(x))


def test_bits():
    assert Codebook([-1, 1]).bits == 1
    assert Codebook([-1, 0, 1]).bits == 2
    assert Codebook(range(256)).bits == 8
    assert Codebook(range(257)).bits == 9


@settings(max_examples=200, deadline=None)
@given(codebooks, st.lists(finite, min_size=1, max_size=50))
def test_projection_properties(values, xs):
    cb = Codebook(values)
    p = cb.project_numpy(xs)
    # In the codebook.
    assert np.isin(p, cb.values).all()
    # Nearest.
    dist = np.abs(np.asarray(xs)[:, None] - cb.values[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(np.asarray(xs) - p), dist, rtol=1e-12, atol=1e-9)
    # Idempotent.
    np.testing.assert_array_equal(cb.project_numpy(p), p)


@settings(max_examples=100, deadline=None)
@given(codebooks)
def test_ties_go_to_the_larger_value_every_time(values):
    cb = Codebook(values)
    mids = cb.midpoints
    p = cb.project_numpy(mids)
    np.testing.assert_array_equal(p, cb.values[1:])
    t = ops.project(tf.constant(mids, tf.float64), cb.values).numpy()
    np.testing.assert_array_equal(t, cb.values[1:])


def test_binary_zero_goes_to_plus_one():
    assert Codebook([-1, 1]).project_numpy([0.0, -0.0]).tolist() == [1.0, 1.0]
    assert ops.project(tf.zeros([3]), [-1.0, 1.0]).numpy().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("k", [2, 3, 4, 8, 9, 16, 256])
def test_tf_projection_matches_numpy(k):
    rng = np.random.default_rng(k)
    cb = Codebook(rng.normal(size=k))
    x = rng.normal(size=(37, 11)) * 2
    got = ops.project(tf.constant(x), cb.values).numpy()
    np.testing.assert_array_equal(got, cb.project_numpy(x))


EVEN_CODEBOOKS = {
    "linspace_256": np.linspace(-1, 1, 256),
    "linspace_16": np.linspace(-1, 1, 16),
    "int4_lattice": np.arange(-8, 8) / 8,
    "offset_9": np.linspace(-3, 5, 9),
    "positive_33": np.linspace(0.1, 0.7, 33),
}


@pytest.mark.parametrize("jit", [False, True], ids=["default", "jit"])
@pytest.mark.parametrize("name", sorted(EVEN_CODEBOOKS))
def test_evenly_spaced_projection_is_arithmetic_and_exact(name, jit):
    """Evenly spaced codebooks of more than 8 values are projected without a
    gather, and give the values and ties of the sorted search, also for the
    float32 numbers on either side of every midpoint."""
    v = EVEN_CODEBOOKS[name]
    cb = Codebook(v)
    mids = cb.midpoints.astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(-1.5, 1.5, 5000) * np.abs(v).max(),
            mids,
            np.nextafter(mids, np.float32(-np.inf)),
            np.nextafter(mids, np.float32(np.inf)),
            v,
            [-1e30, 1e30],
        ]
    ).astype(np.float32)
    x = x[np.abs(x) >= np.finfo(np.float32).tiny]  # TF flushes subnormals to zero
    scale = np.float32(0.37)
    fn = tf.function(lambda t, s: ops.project(t, v, s), jit_compile=jit)
    fn_unscaled = tf.function(lambda t: ops.project(t, v), jit_compile=jit)
    want = v.astype(np.float32)[np.searchsorted(mids, x, side="right")]
    np.testing.assert_array_equal(fn_unscaled(tf.constant(x)).numpy(), want)
    xs = (x / scale).astype(np.float32)
    want_scaled = v.astype(np.float32)[np.searchsorted(mids, xs, side="right")] * scale
    np.testing.assert_array_equal(fn(tf.constant(x), tf.constant(scale)).numpy(), want_scaled)
    graph = (
        tf.function(lambda t: ops.project(t, v))
        .get_concrete_function(tf.TensorSpec([None], tf.float32))
        .graph
    )
    kinds = {op.type for op in graph.get_operations()}
    assert not kinds & {"GatherV2", "ResourceGather", "LowerBound", "UpperBound"}, kinds
    bad = ops.project(tf.constant([0.5, np.nan], tf.float32), v).numpy()
    assert np.isnan(bad).all()


def test_unevenly_spaced_projection_matches_the_sorted_search():
    v = np.sinh(np.linspace(-3.0, 3.0, 32)) / np.sinh(3.0)
    x = np.random.default_rng(1).uniform(-1.5, 1.5, 2000).astype(np.float32)
    got = ops.project(tf.constant(x), v).numpy()
    mids = Codebook(v).midpoints.astype(np.float32)
    np.testing.assert_array_equal(got, v.astype(np.float32)[np.searchsorted(mids, x, "right")])


@pytest.mark.parametrize("k", [4, 256])
def test_projection_never_builds_an_n_by_k_tensor(k):
    n = 1 << 20
    values = np.linspace(-1, 1, k)
    fn = tf.function(lambda x: ops.project_ste(x, values))
    graph = fn.get_concrete_function(tf.TensorSpec([1024, 1024], tf.float32)).graph
    biggest = 0
    for op in graph.get_operations():
        for t in op.outputs:
            if t.shape.is_fully_defined():
                biggest = max(biggest, t.shape.num_elements())
    assert biggest <= n, f"a tensor of {biggest} elements exists for N={n}, K={k}"


def test_integer_step():
    assert Codebook([1, -1, 0.5, -0.5]).integer_step(7) == pytest.approx(1 / 6)
    assert Codebook([-1, 1]).integer_step(7) == pytest.approx(1 / 7)
    assert Codebook([-1, 0, 1]).integer_step(127) == pytest.approx(1 / 127)
    assert Codebook([0.3, -1.7, 1.0]).integer_step(7) is None
    assert Codebook([0.3, -1.7, 1.0]).integer_step(127) == pytest.approx(0.1 / 7)
    pot = Codebook([1, -1, 0.5, -0.5, 0.25, -0.25, 0.125, -0.125])
    assert pot.integer_step(7) is None  # codes would reach 8
    step = pot.integer_step(127)
    codes = pot.values / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert np.abs(codes).max() <= 127
