"""Projection to a codebook and its estimators, written once in `keras.ops`.

The same forward map and gradients as `tfmot_discrete.ops` (the tf_keras
path), on every Keras 3 backend: ties go to the larger value, a NaN or inf
entry makes every entry NaN, the clipped straight-through estimator passes the
gradient only where `c_0 <= w <= c_{K-1}`. A parity test holds the two paths
to the same bits.

The straight-through estimators use `keras.ops.custom_gradient` (a custom
gradient on every backend): the forward pass computes the projection and
nothing else, the backward pass one select. TensorFlow (XLA) and JAX fuse
these selects into one loop over the weight; PyTorch's eager mode runs each
operation as its own pass, and its selects on bool masks are slow (several
times a float multiply). So on PyTorch `project_straight_through` computes the
same values with float arithmetic in a `torch.autograd.Function` (see
`_step_plan`): a comparison written into a float buffer per midpoint, an
exact sum of codebook steps, one multiply by the scale.
"""

from __future__ import annotations

import functools

import numpy as np

from tfmot_discrete.codebook import midpoints
from tfmot_discrete.keras3._k3 import backend, keras, ops
from tfmot_discrete.ops import GRADIENTS, WHERE_CHAIN_MAX_K, reduce_axes

__all__ = [
    "GRADIENTS",
    "all_finite",
    "bucket",
    "fake_quant_int8",
    "mean_abs_scale",
    "project",
    "project_straight_through",
    "stochastic_project",
    "straight_through",
]


def _np_dtype(x):
    return np.dtype(keras.backend.standardize_dtype(x.dtype))


def _const(a, dtype):
    return ops.convert_to_tensor(np.asarray(a, dtype=dtype))


def all_finite(x):
    """A scalar bool tensor: True when every entry of `x` is finite."""
    return ops.all(ops.isfinite(x))


def bucket(x, thresholds):
    """How many of the sorted `thresholds` are `<= x`, for every entry (int32)."""
    t = np.asarray(thresholds, np.float64)
    dtype = _np_dtype(x)
    if t.size == 0:
        return ops.zeros(ops.shape(x), "int32")
    if t.size < WHERE_CHAIN_MAX_K:
        idx = ops.where(x >= _const(t[0], dtype), 1, 0)
        for i in range(1, t.size):
            idx = ops.where(x >= _const(t[i], dtype), i + 1, idx)
        return ops.cast(idx, "int32")
    flat = ops.searchsorted(_const(t, dtype), ops.reshape(x, [-1]), side="right")
    return ops.reshape(ops.cast(flat, "int32"), ops.shape(x))


def project(x, values, scale=None, finite=None):
    """Nearest codebook value for every entry of `x` (ties go up), in `keras.ops`.

    The formulation of `tfmot_discrete.ops.project`: up to `WHERE_CHAIN_MAX_K`
    values a chain of selects on the midpoints (with a `scale`, compared as
    `x >= scale * m_i`); above, the index of each entry's interval and one
    gather.

    Args:
        x: A float tensor of any shape.
        values: Sorted, distinct codebook values.
        scale: Optional positive tensor broadcastable against `x`. Defaults to
            `None` (a scale of 1).
        finite: Optional scalar bool tensor, whether `x` is all finite.
            Defaults to `None`: computed from `x`.

    Returns:
        A tensor of the shape and dtype of `x` holding codebook values (times
        `scale`); every entry NaN when `x` holds a NaN or inf.

    Example:

    >>> ops.convert_to_numpy(project(ops.convert_to_tensor([-0.2, 0.0, 0.7]), [-1.0, 1.0])).tolist()
    [-1.0, 1.0, 1.0]
    """
    v = np.asarray(values, np.float64)
    mids = midpoints(v)
    dtype = _np_dtype(x)
    ok = all_finite(x) if finite is None else finite
    nan = _const(np.nan, dtype)
    if v.size > WHERE_CHAIN_MAX_K:
        table = ops.where(ok, _const(v, dtype), nan)
        y = x if scale is None else x / scale
        out = ops.take(table, bucket(y, mids))
        return out if scale is None else out * scale

    def threshold(a):
        c = _const(a, dtype)
        return c if scale is None else c * scale

    def value(a):
        c = ops.where(ok, _const(a, dtype), nan)
        return c if scale is None else c * scale

    out = ops.where(x >= threshold(mids[0]), value(v[1]), value(v[0]))
    for i in range(1, v.size - 1):
        out = ops.where(x >= threshold(mids[i]), value(v[i + 1]), out)
    return out


def straight_through(forward, x, low, high, gradient, gate=None):
    """`forward(x)` in the forward pass; the straight-through gradient backward.

    Args:
        forward: A function of one tensor (the projection, however scaled).
        x: Its input.
        low: Lower end of the clipped estimator's window.
        high: Upper end of the window.
        gradient: `"clipped_ste"` (gradient only where `low <= gate <= high`)
            or `"ste"` (everywhere).
        gate: The tensor the window is tested on (no gradient flows to it).
            Defaults to `x`.

    Returns:
        `forward(x)`, bit for bit.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")

    def _gated(dy, g):
        if gradient == "ste":
            return dy
        dtype = _np_dtype(g)
        if low == -high:  # one comparison instead of two
            inside = ops.abs(g) <= _const(high, dtype)
        else:
            inside = ops.logical_and(g >= _const(low, dtype), g <= _const(high, dtype))
        return ops.where(inside, dy, ops.zeros_like(dy))

    if gate is None:

        @ops.custom_gradient
        def _fwd(t):
            def grad(*args, upstream=None):
                return _gated(args[0] if upstream is None else upstream, t)

            return forward(t), grad

        return _fwd(x)

    @ops.custom_gradient
    def _fwd_gated(t, g):
        def grad(*args, upstream=None):
            dy = args[0] if upstream is None else upstream
            return _gated(dy, g), ops.zeros_like(g)

        return forward(t), grad

    return _fwd_gated(x, ops.stop_gradient(gate))


def project_straight_through(x, values, low, high, gradient, scale=None, finite=None):
    """`project(x, values, scale, finite)` with a straight-through gradient.

    The same values and gradients as
    `straight_through(lambda t: project(t, values, scale, finite), x, low,
    high, gradient)`, bit for bit; on PyTorch, for a select-chain codebook
    whose steps add up exactly (`_step_plan`), computed by one
    `torch.autograd.Function` in a few float passes.

    Args:
        x: A float tensor of any shape.
        values: Sorted, distinct codebook values.
        low: Lower end of the clipped estimator's window.
        high: Upper end of the window.
        gradient: `"clipped_ste"` or `"ste"`.
        scale: Optional positive tensor broadcastable against `x` (no
            gradient flows to it). Defaults to `None` (a scale of 1).
        finite: Optional scalar bool tensor, whether `x` is all finite.
            Defaults to `None`: computed from `x`.

    Returns:
        The projection of `x` (times `scale`).
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
    dtype = _np_dtype(x)
    plan = _step_plan(tuple(np.asarray(values, np.float64).tolist()), str(dtype))
    if _TorchProjection is not None and plan is not None:
        # The window's ends in `x`'s dtype, as `straight_through` compares them.
        low, high = (float(np.asarray(a, dtype)) for a in (low, high))
        args = (plan, low, high, gradient, finite)
        return _TorchProjection.apply(ops.convert_to_tensor(x), scale, *args)
    return straight_through(
        lambda t: project(t, values, scale=scale, finite=finite), x, low, high, gradient
    )


@functools.lru_cache(maxsize=64)
def _step_plan(values: tuple, dtype: str):
    """`(midpoints, v_0, steps)` in `dtype` when the select chain's result
    `v_j` (`j` = how many midpoints are `<= x`) is exactly
    `((s_0 [x >= m_0] + s_1 [x >= m_1]) + ...) + v_0` computed in `dtype`,
    with `s_i = v_{i+1} - v_i`; else None (too many values, another dtype, or
    a sum that rounds). True of the usual codebooks (binary, ternary, the
    power-of-two and evenly spaced ones with dyadic values)."""
    v = np.asarray(values, np.float64)
    if not 2 <= v.size <= WHERE_CHAIN_MAX_K or dtype not in ("float32", "float64"):
        return None
    vd = v.astype(dtype)
    steps = np.diff(vd)
    for j in range(v.size):
        ind = (np.arange(v.size - 1) < j).astype(dtype)
        acc = ind[0] * steps[0]
        for i in range(1, v.size - 1):
            acc = acc + ind[i] * steps[i]
        acc = acc + vd[0]
        if acc.dtype != vd.dtype or acc.tobytes() != vd[j].tobytes():
            return None
    mids = midpoints(v).astype(dtype)
    return tuple(mids.tolist()), float(vd[0]), tuple(steps.tolist())


def _make_torch_projection():
    import torch  # noqa: PLC0415  (the PyTorch backend only)

    class TorchProjection(torch.autograd.Function):
        """The projection and its straight-through gradient on PyTorch.

        Forward: `torch.ge(x, m_i, out=<float buffer>)` gives each midpoint's
        0/1 indicator as a float (a bool mask costs more to make and far more
        to select with), the steps add them up to `v_j` exactly
        (`_step_plan`), then one multiply by the scale gives `v_j * scale`, the
        product the select chain takes. Thresholds are `scale * m_i`, the
        chain's. Backward: the window test into a float buffer, then
        `threshold_backward` (the ReLU's gradient select: `dy` where the
        indicator is 1, else 0, whatever `dy` holds).
        """

        @staticmethod
        def forward(ctx, x, scale, plan, low, high, gradient, finite):
            mids, v0, steps = plan
            if scale is not None:
                scale = scale.detach()
            out = torch.empty_like(x)
            tmp = torch.empty_like(x) if len(mids) > 1 else None
            for i, (m, step) in enumerate(zip(mids, steps)):
                t = m if scale is None else scale * m
                if i == 0:
                    torch.ge(x, t, out=out)
                    out.mul_(step)
                else:
                    torch.ge(x, t, out=tmp)
                    out.add_(tmp, alpha=step)
            out.add_(v0)
            if scale is not None:
                out.mul_(scale)
            if finite is None:
                ok = bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
            else:
                ok = bool(finite)
            if not ok:
                out.fill_(float("nan"))
            ctx.window = None if gradient == "ste" else (low, high)
            if ctx.window is not None:
                ctx.save_for_backward(x)
            return out

        @staticmethod
        def backward(ctx, dy):
            if ctx.window is None:
                return dy, None, None, None, None, None, None
            (x,) = ctx.saved_tensors
            low, high = ctx.window
            if low == -high:  # one comparison instead of two
                inside = torch.abs(x)
                torch.le(inside, high, out=inside)
            else:
                inside = torch.ge(x, low, out=torch.empty_like(x))
                inside.mul_(torch.le(x, high, out=torch.empty_like(x)))
            dx = torch.ops.aten.threshold_backward(dy, inside, 0.5)
            return dx, None, None, None, None, None, None

    return TorchProjection


_TorchProjection = _make_torch_projection() if backend() == "torch" else None


def mean_abs_scale(w, channel_axes):
    """XNOR-Net's per-channel `mean|w|` (1 for a zero channel), no gradient."""
    axes = reduce_axes(len(w.shape), channel_axes)
    s = ops.mean(ops.abs(w), axis=axes, keepdims=True) if axes else ops.abs(w)
    s = ops.where(ops.equal(s, 0), ops.ones_like(s), s)
    return ops.stop_gradient(s)


def stochastic_project(x, values, seed):
    """BinaryConnect's stochastic rounding to any codebook (see
    `tfmot_discrete.ops.stochastic_project`); `seed` is a
    `keras.random.SeedGenerator` (or an int)."""
    v = np.asarray(values, np.float64)
    dtype = _np_dtype(x)
    vt = ops.where(all_finite(x), _const(v, dtype), _const(np.nan, dtype))
    clipped = ops.clip(x, float(v[0]), float(v[-1]))
    lo_idx = bucket(clipped, v[1:-1])
    lo = ops.take(vt, lo_idx)
    hi = ops.take(vt, lo_idx + 1)
    p_hi = (clipped - lo) / (hi - lo)
    u = keras.random.uniform(ops.shape(x), dtype=str(dtype), seed=seed)
    return ops.where(u < p_hi, hi, lo)


#: 8-bit narrow range: integers 1..255 around a zero point of 128.
_QMIN, _QMAX = 1.0, 255.0


def fake_quant_int8(x, r):
    """TensorFlow's `fake_quant_with_min_max_vars` on `[-r, r]`, 8 bits,
    narrow range, in `keras.ops`: `step = 2r / 254`, values
    `step x round(x / step)` clamped to the range (a channel with `r = 0`
    gives 0).

    Args:
        x: A float tensor.
        r: Non-negative range, broadcastable against `x` (one per channel).

    Returns:
        `(values, nudged_low, nudged_high)`: the fake-quantized `x`, and the
        range its straight-through gradient passes in.
    """
    dtype = _np_dtype(x)
    r = ops.cast(r, dtype)
    ok = r > 0
    r = ops.where(ok, r, ops.ones_like(r))
    lo, hi = -r, r
    span = _const(_QMAX - _QMIN, dtype)
    step = (hi - lo) / span
    inv_step = _const(1.0, dtype) / step
    zero_from_min = _const(_QMIN, dtype) - lo / step
    zero = ops.floor(ops.clip(zero_from_min, _QMIN, _QMAX) + _const(0.5, dtype))
    nudged_lo = (_const(_QMIN, dtype) - zero) * step
    nudged_hi = (_const(_QMAX, dtype) - zero) * step
    clamped = ops.minimum(ops.maximum(x, nudged_lo), nudged_hi)
    # The integer code, then (code - zero point) x step, as TensorFlow's kernel.
    code = ops.floor((clamped - nudged_lo) * inv_step + _const(0.5, dtype))
    out = (code - (zero - _const(_QMIN, dtype))) * step
    return ops.where(ok, out, ops.zeros_like(out)), nudged_lo, nudged_hi
