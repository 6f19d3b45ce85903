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

from tfmot_discrete.codebook import midpoints

#: Codebooks up to this size use a chain of `tf.where` (cheapest for small K);
#: larger ones a sorted search, O(N log K) time and O(N) memory.
WHERE_CHAIN_MAX_K = 8

GRADIENTS = ("clipped_ste", "ste")


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


def project(x: tf.Tensor, values) -> tf.Tensor:
    """Nearest codebook value for every entry of `x`, never an N x K tensor.

    Args:
        x: A float tensor of any shape.
        values: Sorted, distinct codebook values (a 1-D array-like).

    Returns:
        A tensor of the shape and dtype of `x` holding only entries of `values`.
        An entry exactly halfway between two values takes the larger one.
        When `x` holds a NaN or inf, every entry is NaN: a diverged weight
        shows in the loss instead of silently becoming a codebook value.

    Example:

    >>> project(tf.constant([-0.2, 0.0, 0.7]), [-1.0, 1.0]).numpy().tolist()
    [-1.0, 1.0, 1.0]
    """
    v = _as_np(values)
    mids = midpoints(v)
    dtype = x.dtype
    k = v.size
    ok = all_finite(x)
    nan = tf.constant(np.nan, dtype)

    def value(i):
        return tf.where(ok, tf.constant(v[i], dtype), nan)

    if k == 2:
        return tf.where(x >= tf.constant(mids[0], dtype), value(1), value(0))
    if k <= WHERE_CHAIN_MAX_K:
        out = tf.fill(tf.shape(x), value(0))
        for i in range(k - 1):
            out = tf.where(x >= tf.constant(mids[i], dtype), value(i + 1), out)
        return out
    flat = tf.reshape(x, [-1])
    idx = tf.searchsorted(tf.constant(mids, dtype), flat, side="right")
    table = tf.where(ok, tf.constant(v, dtype), nan)
    return tf.reshape(tf.gather(table, idx), tf.shape(x))


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

    @tf.custom_gradient
    def _fwd(t, g):
        def grad(dy):
            if gradient == "ste":
                return dy, tf.zeros_like(g)
            low, high = tf.constant(v[0], g.dtype), tf.constant(v[-1], g.dtype)
            inside = tf.logical_and(g >= low, g <= high)
            return tf.where(inside, dy, tf.zeros_like(dy)), tf.zeros_like(g)

        return forward(t), grad

    return _fwd(x, x if gate is None else gate)


def stochastic_project(x: tf.Tensor, values, seed=None) -> tf.Tensor:
    """BinaryConnect's stochastic rounding, generalized to any codebook.

    Each entry lying between neighbours `c_i <= x < c_{i+1}` becomes `c_{i+1}`
    with probability `(x - c_i) / (c_{i+1} - c_i)` and `c_i` otherwise, so the
    result equals `x` in expectation (entries outside the range are clipped).
    """
    v = _as_np(values)
    dtype = x.dtype
    vt = tf.constant(v, dtype)
    flat = tf.clip_by_value(tf.reshape(x, [-1]), v[0], v[-1])
    lo_idx = tf.clip_by_value(tf.searchsorted(vt, flat, side="right") - 1, 0, v.size - 2)
    lo = tf.gather(vt, lo_idx)
    hi = tf.gather(vt, lo_idx + 1)
    p_hi = (flat - lo) / (hi - lo)
    u = tf.random.uniform(tf.shape(flat), dtype=dtype, seed=seed)
    out = tf.where(all_finite(x), tf.where(u < p_hi, hi, lo), tf.constant(np.nan, dtype))
    return tf.reshape(out, tf.shape(x))


def reduce_axes(rank: int, channel_axes) -> list[int]:
    """Axes to reduce over to get one number per channel (`channel_axes` kept)."""
    keep = {a % rank for a in channel_axes} if rank else set()
    return [a for a in range(rank) if a not in keep]


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
