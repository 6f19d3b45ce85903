"""Pure TensorFlow functions: projection to a codebook and its gradients.

Forward, for a codebook `c_0 < ... < c_{K-1}` with midpoints `m_i`:

    project(w) = c_i  where  m_{i-1} <= w < m_i      (ties go up)

Backward (straight-through estimators, BinaryConnect 2015, BNN 2016):

    "ste":          d project / d w = 1
    "clipped_ste":  d project / d w = 1  if c_0 <= w <= c_{K-1}, else 0
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmot_discrete.core import learned
from tfmot_discrete.core.codebook import GRADIENTS, WHERE_CHAIN_MAX_K, midpoints, reduce_axes
from tfmot_discrete.tfk import compat


def _as_np(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def all_finite(x: tf.Tensor) -> tf.Tensor:
    """A scalar bool tensor: True when every entry of `x` is finite.

    One reduction; the elementwise test runs only when the sum is not finite
    (a NaN or inf entry, or an overflowing sum of huge finite ones).

    Example:

    >>> bool(all_finite(tf.constant([1.0, float("nan")])))
    False
    """
    return tf.cond(
        tf.math.is_finite(tf.reduce_sum(x)),
        lambda: tf.constant(True),
        lambda: tf.reduce_all(tf.math.is_finite(x)),
    )


def project(x: tf.Tensor, values, scale=None, finite=None) -> tf.Tensor:
    """Nearest codebook value for every entry of `x`, never an N x K tensor.

    Up to `WHERE_CHAIN_MAX_K` values, a chain of `K - 1` selects on the
    midpoints; above, for an evenly spaced codebook, elementwise arithmetic
    (`_Grid`, whose cost does not grow with K); otherwise the index of each
    entry's interval (`bucket`) and one gather. With a `scale`, the select
    chain computes `scale * project(x / scale)` as `x >= scale * m_i`, so the
    N-sized divide and multiply are not needed.

    Args:
        x: A float tensor of any shape.
        values: Sorted, distinct codebook values (a 1-D array-like).
        scale: Optional positive tensor broadcastable against `x` (one number
            per channel). Defaults to `None` (a scale of 1).
        finite: Optional scalar bool tensor: whether every entry of `x` is
            finite, when the caller knows it already (a `mean_abs_scale` of
            `x` is finite exactly when `x` is, unless a channel's mean
            overflows float32, which then counts as non-finite). Defaults to
            `None`: `all_finite(x)`, one more reduction over `x`.

    Returns:
        A tensor of the shape and dtype of `x` holding only entries of `values`
        (times `scale`). An entry exactly halfway between two values takes the
        larger one. When `x` holds a NaN or inf, every entry is NaN: a diverged
        weight shows in the loss instead of silently becoming a codebook value.

    Example:

    >>> project(tf.constant([-0.2, 0.0, 0.7]), [-1.0, 1.0]).numpy().tolist()
    [-1.0, 1.0, 1.0]
    """
    v = _as_np(values)
    mids = midpoints(v)
    dtype = x.dtype
    # The codebook values (never the midpoints) become NaN when `x` holds a
    # NaN or inf: a select on K numbers, not on N.
    ok = all_finite(x) if finite is None else finite
    nan = tf.constant(np.nan, dtype)
    if v.size > WHERE_CHAIN_MAX_K:
        grid = _Grid.of(v, dtype)
        if grid is not None:
            return grid.project(x, ok, scale)
        table = tf.where(ok, tf.constant(v, dtype), nan)
        if scale is None:
            return tf.gather(table, bucket(x, mids))
        return tf.gather(table, bucket(x / scale, mids)) * scale

    def const(a):
        c = tf.constant(a, dtype)
        return c if scale is None else c * scale

    def value(a):
        c = tf.where(ok, tf.constant(a, dtype), nan)
        return c if scale is None else c * scale

    out = tf.where(x >= const(mids[0]), value(v[1]), value(v[0]))
    for i in range(1, v.size - 1):
        out = tf.where(x >= const(mids[i]), value(v[i + 1]), out)
    return out


class _Grid:
    """An evenly spaced codebook projected by arithmetic alone: no gather.

    Index and value come from `c_0 + i * step` computed in float64 and rounded
    once to `x`'s dtype. `of` accepts a codebook only when that rounding gives
    exactly its values and midpoints (with a margin, so a fused multiply-add
    cannot change a result), so `project` returns what the select chain or
    the sorted search would: the same values, the same ties. Every step is
    elementwise, so XLA fuses the whole projection into one loop.
    """

    def __init__(self, c0: float, step: float, k: int):
        self.c0, self.step, self.k = c0, step, k

    @classmethod
    def of(cls, v: np.ndarray, dtype) -> _Grid | None:
        k = v.size
        if k < 2 or not np.all(np.isfinite(v)) or dtype not in (tf.float32, tf.float16):
            return None
        np_dtype = dtype.as_numpy_dtype
        step = (v[-1] - v[0]) / (k - 1)
        if not step > 0:
            return None
        grid = cls(float(v[0]), float(step), k)
        i = np.arange(k, dtype=np.float64)
        exact_values = _rounds_to(grid.c0 + i * grid.step, v.astype(np_dtype))
        exact_mids = _rounds_to(grid.c0 + (i[:-1] + 0.5) * grid.step, midpoints(v).astype(np_dtype))
        return grid if exact_values and exact_mids else None

    def _at(self, i, offset, dtype):
        return tf.cast(tf.constant(self.c0, tf.float64) + (i + offset) * self.step, dtype)

    def project(self, x, ok, scale):
        dtype = x.dtype
        y = x if scale is None else x / scale
        u = (tf.cast(y, tf.float64) - self.c0) * (1.0 / self.step)
        i = tf.clip_by_value(tf.floor(u + 0.5), 0.0, self.k - 1.0)  # off by at most one
        i = tf.where(y < self._at(i, -0.5, dtype), i - 1.0, i)  # below the lower midpoint
        i = tf.where(y >= self._at(i, 0.5, dtype), i + 1.0, i)  # at or above the upper one
        i = tf.clip_by_value(i, 0.0, self.k - 1.0)
        # NaN for every entry when `x` holds a NaN or inf (one scalar select).
        c0 = tf.where(ok, tf.constant(self.c0, tf.float64), tf.constant(np.nan, tf.float64))
        out = tf.cast(c0 + i * self.step, dtype)
        return out if scale is None else out * scale


def _rounds_to(exact: np.ndarray, want: np.ndarray) -> bool:
    """`exact` (float64) rounds to `want` in its dtype, also when off by 4 float64 ulps."""
    slack = 4 * np.spacing(np.abs(exact))
    return all(np.array_equal((exact + d).astype(want.dtype), want) for d in (-slack, 0.0, slack))


def bucket(x: tf.Tensor, thresholds) -> tf.Tensor:
    """How many of the sorted `thresholds` are `<= x`, for every entry (int32).

    `tf.searchsorted(thresholds, x, side="right")`, written for speed: a
    select chain for a few thresholds; for evenly spaced ones a closed form
    (`floor`, then one exact correction against the neighbouring thresholds),
    whose cost does not grow with their number; otherwise `tf.searchsorted`,
    or, when compiled with XLA (whose `searchsorted` compares every entry with
    every threshold, O(N x M)), a binary search of `ceil(log2(M + 1))`
    gather-and-select steps that XLA fuses into one loop. NaN entries get some
    index in `[0, M]`.

    Args:
        x: A float tensor of any shape.
        thresholds: Sorted, distinct finite numbers (a 1-D array-like).

    Returns:
        An int32 tensor of the shape of `x`, values in `[0, len(thresholds)]`.

    Example:

    >>> bucket(tf.constant([-3.0, 0.0, 0.5, 9.0]), [-1.0, 0.0, 1.0]).numpy().tolist()
    [0, 2, 2, 3]
    """
    t = _as_np(thresholds)
    dtype = x.dtype
    m = t.size
    if m == 0:
        return tf.zeros(tf.shape(x), tf.int32)
    if m < WHERE_CHAIN_MAX_K:
        idx = tf.where(x >= tf.constant(t[0], dtype), 1, 0)
        for i in range(1, m):
            idx = tf.where(x >= tf.constant(t[i], dtype), i + 1, idx)
        return idx
    # The thresholds in `x`'s dtype, NaN before and after: `x >= NaN` and
    # `x < NaN` are false, so an index never leaves [0, m].
    table = np.full(m + 2, np.nan)
    table[1:-1] = t
    if _evenly_spaced(t):
        table = tf.constant(table, dtype)
        inv_step = (m - 1) / (t[-1] - t[0])
        guess = tf.floor((x - tf.constant(t[0], dtype)) * tf.constant(inv_step, dtype)) + 1.0
        guess = tf.clip_by_value(guess, 0.0, float(m))  # +-inf into range
        idx = tf.clip_by_value(tf.cast(guess, tf.int32), 0, m)  # NaN casts to anything
        # `guess` is off by at most one: move it to the exact count.
        idx = tf.where(x < tf.gather(table, idx), idx - 1, idx)
        return tf.where(x >= tf.gather(table, idx + 1), idx + 1, idx)
    if not _in_xla():
        flat = tf.searchsorted(tf.constant(t, dtype), tf.reshape(x, [-1]), side="right")
        return tf.reshape(flat, tf.shape(x))
    size = 1 << int(np.ceil(np.log2(m + 1)))
    table = tf.constant(np.concatenate([t, np.full(size - m, np.nan)]), dtype)
    idx = tf.zeros(tf.shape(x), tf.int32)
    half = size // 2
    while half >= 1:
        cand = idx + half
        idx = tf.where(x >= tf.gather(table, cand - 1), cand, idx)
        half //= 2
    return idx


def _in_xla() -> bool:
    """True while tracing a function compiled with XLA (`jit_compile=True`)."""
    graph = tf.compat.v1.get_default_graph()
    return compat.in_xla_context(graph)


def _evenly_spaced(t: np.ndarray) -> bool:
    """Equal gaps, and small enough numbers that `(x - t_0) / gap` cannot overflow."""
    d = np.diff(t)
    if not (np.all(np.abs(t) < 1e30) and d.min() > 1e-30):
        return False
    return bool(np.all(np.abs(d - d.mean()) <= 1e-6 * d.mean()))


def project_ste(x: tf.Tensor, values, gradient: str = "clipped_ste") -> tf.Tensor:
    """`project(x, values)` with a straight-through gradient.

    Args:
        x: Latent weights (float tensor).
        values: Sorted, distinct codebook values.
        gradient: `"clipped_ste"` (pass the gradient only where
            `values[0] <= x <= values[-1]`) or `"ste"` (pass it everywhere).

    Returns:
        The projected tensor.

    References:
        Courbariaux et al., BinaryConnect (2015); Hubara et al., Binarized
        Neural Networks (2016).
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
    v = _as_np(values)
    return straight_through(lambda t: project(t, v), x, v, gradient)


def straight_through(forward, x: tf.Tensor, values, gradient: str, gate=None) -> tf.Tensor:
    """`forward(x)`, differentiated with the straight-through estimator.

    The gradient with respect to `x` is the incoming gradient, passed
    everywhere (`"ste"`) or only where `values[0] <= gate <= values[-1]`
    (`"clipped_ste"`); `gate` defaults to `x` itself.

    Args:
        forward: A function of one tensor (the projection, however scaled).
        x: Its input.
        values: Sorted, distinct codebook values.
        gradient: `"clipped_ste"` or `"ste"`.
        gate: The tensor the clipped gradient is gated on (no gradient flows
            to it). Defaults to `x`.

    Returns:
        `forward(x)`.
    """
    v = _as_np(values)

    def _gated(dy, g):
        if gradient == "ste":
            return dy
        return _clipped_gradient(dy, g, v[0], v[-1])

    if gate is None:  # one input: no zero gradient to build and add for a second one

        @tf.custom_gradient
        def _fwd(t):
            return forward(t), lambda dy: _gated(dy, t)

        return _fwd(x)

    @tf.custom_gradient
    def _fwd_gated(t, g):
        return forward(t), lambda dy: (_gated(dy, g), tf.zeros_like(g))

    return _fwd_gated(x, gate)


def _clipped_gradient(dy, x, low, high):
    zero = tf.constant(0, dy.dtype)
    if low == -high:  # one comparison instead of two
        return tf.where(tf.abs(x) <= tf.constant(high, x.dtype), dy, zero)
    inside = tf.logical_and(x >= tf.constant(low, x.dtype), x <= tf.constant(high, x.dtype))
    return tf.where(inside, dy, zero)


def stochastic_project(x: tf.Tensor, values, seed=None) -> tf.Tensor:
    """BinaryConnect's stochastic rounding, generalized to any codebook.

    Each entry lying between neighbours `c_i <= x < c_{i+1}` becomes `c_{i+1}`
    with probability `(x - c_i) / (c_{i+1} - c_i)` and `c_i` otherwise, so the
    result equals `x` in expectation (entries outside the range are clipped).
    When `x` holds a NaN or inf, every entry is NaN (as in `project`).
    """
    v = _as_np(values)
    dtype = x.dtype
    vt = tf.where(all_finite(x), tf.constant(v, dtype), tf.constant(np.nan, dtype))
    clipped = tf.clip_by_value(x, v[0], v[-1])
    lo_idx = bucket(clipped, v[1:-1])  # the interval [c_i, c_{i+1}) holding x
    lo = tf.gather(vt, lo_idx)
    hi = tf.gather(vt, lo_idx + 1)
    p_hi = (clipped - lo) / (hi - lo)
    u = tf.random.uniform(tf.shape(x), dtype=dtype, seed=seed)
    return tf.where(u < p_hi, hi, lo)


def mean_abs_scale(w: tf.Tensor, channel_axes) -> tf.Tensor:
    """XNOR-Net's per-channel scale `mean|w|`, broadcastable against `w`.

    The scale is a constant for the gradient (as in Larq's
    `magnitude_aware_sign`); zero channels get a scale of 1. A channel holding
    NaN or inf gets a NaN or inf scale, so the layer's output (and the loss)
    shows it instead of hiding it.
    """
    axes = reduce_axes(w.shape.rank, channel_axes)
    s = tf.reduce_mean(tf.abs(w), axis=axes, keepdims=True) if axes else tf.abs(w)
    s = tf.where(tf.equal(s, 0), tf.ones_like(s), s)
    return tf.stop_gradient(s)


def project_values(v: tf.Tensor, snap: bool = True) -> tf.Tensor:
    """`tfmot_discrete.core.learned.project_values` in TensorFlow: learned
    values sorted, at least one grid step apart and (`snap`) on the grid,
    bit for bit as NumPy computes them.

    Example:

    >>> project_values(tf.constant([1.0, -0.3, 0.0])).numpy().tolist()
    [-0.296875, 0.0, 1.0]
    """
    v = tf.sort(tf.cast(v, tf.float32))
    k = int(v.shape[0])
    steps = tf.constant(learned.STEPS)
    qmax = tf.constant(float(learned.VALUE_QMAX), tf.float32)
    i = tf.reduce_sum(tf.cast(qmax * steps < tf.reduce_max(tf.abs(v)), tf.int32))
    g = tf.gather(steps, tf.minimum(i, learned.STEPS.size - 1))
    c = v / g
    if snap:
        c = tf.round(c)
    c = tf.clip_by_value(c, -qmax, qmax)
    ramp = tf.range(k, dtype=tf.float32)
    c = _cummax(c - ramp) + ramp
    c = tf.minimum(c, qmax - (k - 1) + ramp)
    return c * g


def _cummax(x: tf.Tensor) -> tf.Tensor:
    """Running maximum of a short vector (a K x K select and one reduction)."""
    k = int(x.shape[0])
    lower = tf.constant(np.tril(np.ones((k, k), bool)))
    low = tf.constant(-np.inf, x.dtype)
    return tf.reduce_max(tf.where(lower, x[None, :], low), axis=1)


def project_learned(
    x: tf.Tensor, values: tf.Tensor, low, high, gradient: str, scale=None, finite=None
) -> tf.Tensor:
    """Nearest learned value for every entry of `x` (times `scale`), with the
    straight-through gradient to `x` and each value's gradient the sum of
    the upstream gradient (times the scale) over the entries it takes.

    Args:
        x: Latent weights.
        values: The learned values, sorted and distinct (a `(K,)` tensor,
            `project_values` of the trainable vector).
        low: Lower end of the clipped estimator's window.
        high: Upper end of the window.
        gradient: `"clipped_ste"` or `"ste"`.
        scale: Optional positive tensor broadcastable against `x` (no gradient
            flows to it). Defaults to `None` (a scale of 1).
        finite: Optional scalar bool tensor, whether `x` is all finite.
            Defaults to whether `scale` (else `x`) is.

    Returns:
        A tensor of the shape and dtype of `x`; every entry NaN when `x`
        holds a NaN or inf.

    References:
        Zhu et al., Trained Ternary Quantization (2017); Zhang et al.,
        LQ-Nets (2018).
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
    k = int(values.shape[0])
    dtype = x.dtype
    if finite is None:
        finite = all_finite(x if scale is None else scale)

    def scaled(a):
        return a if scale is None else a * scale

    @tf.custom_gradient
    def _fwd(t, v):
        v = tf.cast(v, dtype)
        mids = v[:-1] / 2.0 + v[1:] / 2.0
        table = tf.where(finite, v, tf.constant(np.nan, dtype))
        if k <= WHERE_CHAIN_MAX_K:
            idx = None
            out = tf.where(t >= scaled(mids[0]), scaled(table[1]), scaled(table[0]))
            for i in range(1, k - 1):
                out = tf.where(t >= scaled(mids[i]), scaled(table[i + 1]), out)
        else:
            y = t if scale is None else t / scale
            idx = tf.reshape(tf.searchsorted(mids, tf.reshape(y, [-1]), side="right"), tf.shape(t))
            out = scaled(tf.gather(table, idx))

        def grad(dy):
            dx = dy if gradient == "ste" else _clipped_gradient(dy, t, low, high)
            g = scaled(dy)
            if idx is not None:
                dv = tf.math.unsorted_segment_sum(tf.reshape(g, [-1]), tf.reshape(idx, [-1]), k)
            else:
                # Sum of g at or above each midpoint; value i takes the entries
                # between midpoints i - 1 and i.
                above = [tf.reduce_sum(tf.where(t >= scaled(m), g, 0.0)) for m in tf.unstack(mids)]
                total = tf.reduce_sum(g)
                dv = tf.stack(
                    [total - above[0]] + [a - b for a, b in zip(above, above[1:])] + [above[-1]]
                )
            return dx, tf.cast(dv, v.dtype)

        return out, grad

    return _fwd(x, values)
