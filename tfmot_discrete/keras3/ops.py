"""Projection to a codebook and its estimators, written once in `keras.ops`.

The same forward map and gradients as `tfmot_discrete.tfk.ops` (the tf_keras
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
same values in a `torch.autograd.Function` with a few float passes over the
weight (`_torch_projection`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tfmot_discrete.core import learned
from tfmot_discrete.core.codebook import GRADIENTS, WHERE_CHAIN_MAX_K, midpoints, reduce_axes
from tfmot_discrete.keras3._k3 import backend, keras, ops

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
    """A scalar bool tensor: True when every entry of `x` is finite.

    On JAX, whether `sum(x - x)` is finite: `x - x` is 0 for a finite entry
    and NaN for a NaN or inf one, and a sum of zeros cannot overflow, so the
    answer is the same. XLA on CPU runs it as one reduction reading `x`
    (`x * 0` would read a broadcast zero array too), where
    `all(isfinite(x))` writes a bool array of `x`'s shape first and reduces
    it in blocks: 0.18 ms instead of 0.40 ms on a 1024 x 1024 weight.
    """
    if backend() == "jax":
        return ops.isfinite(ops.sum(ops.subtract(x, x)))
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

    The formulation of `tfmot_discrete.tfk.ops.project`: up to `WHERE_CHAIN_MAX_K`
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

    The values and gradients of
    `straight_through(lambda t: project(t, values, scale, finite), x, low,
    high, gradient)`; on PyTorch, for a finite `x` and a select-chain
    codebook, computed by `_torch_projection` in `K` passes or so over `x`
    instead of four or five per value.

    Args:
        x: A float tensor of any shape.
        values: Sorted, distinct codebook values.
        low: Lower end of the clipped estimator's window.
        high: Upper end of the window.
        gradient: `"clipped_ste"` or `"ste"`.
        scale: Optional positive tensor broadcastable against `x` (no
            gradient flows to it). Defaults to `None` (a scale of 1).
        finite: Optional scalar bool tensor, whether `x` is all finite.
            Defaults to `None`: whether `scale` is, when given (a
            `mean_abs_scale` of `x` is finite exactly when `x` is, unless a
            channel's mean overflows, which then counts as non-finite), else
            whether `x` is.

    Returns:
        The projection of `x` (times `scale`).
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
    if _TORCH is not None and len(values) <= WHERE_CHAIN_MAX_K:
        out = _torch_projection(x, values, low, high, gradient, scale, finite)
        if out is not None:
            return out
    if finite is None and scale is not None:
        finite = all_finite(scale)
    return straight_through(
        lambda t: project(t, values, scale=scale, finite=finite), x, low, high, gradient
    )


def _torch_projection(x, values, low, high, gradient, scale, finite):
    """The select chain of `project` on PyTorch, or None when `x` is not
    finite (or said not to be) or a scaled codebook could overflow: the
    general path then runs.

    `torch.where` on a bool mask is a slow kernel on CPU, and every eager
    operation is one more pass over the weight; here the chain is a
    comparison written into a reused float buffer (0 or 1) and a `torch.lerp`
    between two codebook values (times the scale) per midpoint: `lerp(a, b,
    0)` is `a` and `lerp(a, b, 1)` is `b`, exactly, when `b - a` is finite.
    One `aminmax` tells whether `x` is finite and inside the estimator's
    window; inside it (the clipping constraint keeps it there) the gradient is
    `dy` itself, outside one `hardtanh_backward` (the gradient select of
    `clamp`, open window) on the window widened by one ulp, which for finite
    `x` is the closed window of `straight_through`.
    """
    torch = _TORCH
    x = x if isinstance(x, torch.Tensor) else ops.convert_to_tensor(x)
    dtype = _TORCH_FLOATS.get(x.dtype)
    if dtype is None or not x.ndim or not x.numel() or (finite is not None and not bool(finite)):
        return None
    v, mids, window = _chain_constants(
        tuple(np.asarray(values, np.float64).tolist()), dtype, low, high
    )
    with torch.no_grad():
        x_min, x_max = (float(a) for a in torch.aminmax(x))  # NaN if x holds one
        if not (math.isfinite(x_min) and math.isfinite(x_max)):
            return None
        if scale is None:
            # Rows along the last axis: `lerp` broadcasts a 0-d tensor slowly.
            shape = x.shape[-1:]
            rows = [torch.full(shape, a, dtype=x.dtype, device=x.device) for a in v]
            thresholds = mids
        else:
            scale = ops.convert_to_tensor(scale).detach()
            # `v * scale` and the differences `lerp` takes must stay finite
            # (a NaN or inf scale fails this too).
            largest = float(np.finfo(dtype).max)
            if not float(scale.max()) * max(abs(v[0]), abs(v[-1])) * 2 < largest:
                return None
            rows = [scale * a for a in v]
            thresholds = [scale * m for m in mids]
    if gradient == "ste" or window[0] < x_min <= x_max < window[1]:
        window = None  # the gradient is `dy` everywhere
    return _TorchSelectChain.apply(x, thresholds, rows, window)


@functools.lru_cache(maxsize=64)
def _chain_constants(values: tuple, dtype: str, low: float, high: float):
    """The codebook values and midpoints in `dtype` (as Python floats), and
    the estimator's window `[low, high]` in `dtype`, one ulp wider each side."""
    dt = np.dtype(dtype).type
    v = np.asarray(values, np.float64)
    window = (
        float(np.nextafter(dt(low), dt(-np.inf))),
        float(np.nextafter(dt(high), dt(np.inf))),
    )
    return v.astype(dt).tolist(), midpoints(v).astype(dt).tolist(), window


def _make_torch_select_chain(torch):
    class TorchSelectChain(torch.autograd.Function):
        """`project`'s select chain for a finite `x` (see `_torch_projection`)."""

        @staticmethod
        def forward(ctx, x, thresholds, rows, window):
            ind = _scratch_like(x)
            torch.ge(x, thresholds[0], out=ind)
            out = torch.lerp(rows[0], rows[1], ind)
            for t, row in zip(thresholds[1:], rows[2:]):
                torch.ge(x, t, out=ind)
                out.lerp_(row, ind)
            ctx.window = window
            if window is not None:
                ctx.save_for_backward(x)
            return out

        @staticmethod
        def backward(ctx, dy):
            if ctx.window is None:
                return dy, None, None, None
            (x,) = ctx.saved_tensors
            return torch.ops.aten.hardtanh_backward(dy, x, *ctx.window), None, None, None

    return TorchSelectChain


def torch_fake_quant(x, zero_point, scale, nudged_min, nudged_max):
    """`activations.fake_quant` after its range arithmetic, on PyTorch: one
    `torch.autograd.Function` whose forward runs the same float32 operations
    in place on one buffer (the same values bit for bit) and whose backward
    passes the gradient inside the range, ends included. Eager PyTorch runs
    each `keras.ops` call as its own kernel with its own output tensor.

    On the CPU, clamping to Python numbers is about 8x faster than to 0-d
    tensors, and `hardtanh_backward` (the gradient inside an open interval)
    about 15x faster than comparisons making a bool mask: the ends are given
    to it one float step outside the range, which keeps them inside. (A NaN
    input takes the gradient where TensorFlow gives it none; its output, and
    so the loss, is NaN either way.)"""
    if x.device.type == "cpu":
        lo, hi = float(nudged_min), float(nudged_max)
        return _TorchFakeQuant.apply(x, zero_point, scale, lo, hi, _float_steps_out(x, lo, hi))
    return _TorchFakeQuant.apply(x, zero_point, scale, nudged_min, nudged_max, None)


def _float_steps_out(x, lo, hi):
    """`(lo, hi)` each moved one step of `x`'s float type away from the other."""
    dtype = np.float32 if x.dtype == _TORCH.float32 else np.float64
    return (
        float(np.nextafter(dtype(lo), dtype(-np.inf))),
        float(np.nextafter(dtype(hi), dtype(np.inf))),
    )


def _make_torch_fake_quant(torch):
    class TorchFakeQuant(torch.autograd.Function):
        """See `torch_fake_quant`."""

        @staticmethod
        def forward(ctx, x, zero_point, scale, lo, hi, open_window):
            ctx.open_window = open_window
            ctx.save_for_backward(x, *(() if open_window else (lo, hi)))
            out = torch.clamp(x, lo, hi)
            return out.sub_(lo).div_(scale).add_(0.5).floor_().sub_(zero_point).mul_(scale)

        @staticmethod
        def backward(ctx, dy):
            if ctx.open_window:
                (x,) = ctx.saved_tensors
                grad = torch.ops.aten.hardtanh_backward(dy, x, *ctx.open_window)
            else:
                x, lo, hi = ctx.saved_tensors
                grad = dy * ((x >= lo) & (x <= hi))
            return grad, None, None, None, None, None

    return TorchFakeQuant


def _scratch_like(x):
    """A buffer of `x`'s shape for values that never leave the function using
    it: one per thread, dtype and device, grown to the largest size asked
    (a fresh buffer per call costs page faults on every training step)."""
    cache = _SCRATCH.__dict__
    key = (x.dtype, x.device)
    buf = cache.get(key)
    if buf is None or buf.numel() < x.numel():
        buf = cache[key] = _TORCH.empty(x.numel(), dtype=x.dtype, device=x.device)
    return buf[: x.numel()].view(x.shape)


if backend() == "torch":
    import threading

    import torch as _TORCH

    _SCRATCH = threading.local()
    _TORCH_FLOATS = {_TORCH.float32: "float32", _TORCH.float64: "float64"}
    _TorchSelectChain = _make_torch_select_chain(_TORCH)
    _TorchFakeQuant = _make_torch_fake_quant(_TORCH)
else:
    _TORCH = None


def mean_abs_scale(w, channel_axes):
    """XNOR-Net's per-channel `mean|w|` (1 for a zero channel), no gradient."""
    axes = reduce_axes(len(w.shape), channel_axes)
    if _TORCH is not None and axes:
        w = ops.convert_to_tensor(w)
        if w.dtype == _TORCH.float32:
            # What `ops.mean` and `ops.where` run on PyTorch for float32 (they
            # compute float64 in float32), with `|w|` in the reused buffer
            # instead of a new one.
            with _TORCH.no_grad():
                s = _TORCH.mean(_TORCH.abs(w, out=_scratch_like(w)), axes, True)
                return _TORCH.where(s == 0, 1.0, s)
    s = ops.mean(ops.abs(w), axis=axes, keepdims=True) if axes else ops.abs(w)
    s = ops.where(ops.equal(s, 0), ops.ones_like(s), s)
    return ops.stop_gradient(s)


def stochastic_project(x, values, seed):
    """BinaryConnect's stochastic rounding to any codebook (see
    `tfmot_discrete.tfk.ops.stochastic_project`); `seed` is a
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


def project_values(v, snap=True):
    """`tfmot_discrete.core.learned.project_values` in `keras.ops`: learned
    values sorted, at least one grid step apart and (`snap`) on the grid, bit
    for bit as NumPy and the tf_keras path compute them."""
    v = ops.sort(ops.cast(v, "float32"))
    k = int(v.shape[0])
    steps = _const(learned.STEPS, "float32")
    qmax = float(learned.VALUE_QMAX)
    i = ops.sum(ops.cast(steps * qmax < ops.max(ops.abs(v)), "int32"))
    g = ops.take(steps, ops.minimum(i, learned.STEPS.size - 1))
    c = v / g
    if snap:
        c = ops.round(c)
    c = ops.clip(c, -qmax, qmax)
    ramp = _const(np.arange(k), "float32")
    lower = _const(np.tril(np.ones((k, k), bool)), "bool")
    c = ops.max(ops.where(lower, (c - ramp)[None, :], _const(-np.inf, "float32")), axis=1) + ramp
    c = ops.minimum(c, qmax - (k - 1) + ramp)
    return c * g


def project_learned(x, values, low, high, gradient, scale=None, finite=None):
    """`tfmot_discrete.tfk.ops.project_learned` in `keras.ops`: the nearest
    learned value (times `scale`), the straight-through gradient to `x`, and
    to each value the sum of the upstream gradient (times the scale) over
    the entries that take it (TTQ, LQ-Nets)."""
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
    k = int(values.shape[0])
    dtype = _np_dtype(x)
    if finite is None:
        finite = all_finite(x if scale is None else scale)

    def scaled(a):
        return a if scale is None else a * scale

    def indices(t, mids):
        y = t if scale is None else t / scale
        flat = ops.searchsorted(mids, ops.reshape(y, [-1]), side="right")
        return ops.reshape(ops.cast(flat, "int32"), ops.shape(t))

    @ops.custom_gradient
    def _fwd(t, v):
        v = ops.cast(v, dtype)
        mids = v[:-1] / 2.0 + v[1:] / 2.0
        table = ops.where(finite, v, _const(np.nan, dtype))
        if k <= WHERE_CHAIN_MAX_K:
            out = ops.where(t >= scaled(mids[0]), scaled(table[1]), scaled(table[0]))
            for i in range(1, k - 1):
                out = ops.where(t >= scaled(mids[i]), scaled(table[i + 1]), out)
        else:
            out = scaled(ops.take(table, indices(t, mids)))

        def grad(*args, upstream=None):
            dy = args[0] if upstream is None else upstream
            if gradient == "ste":
                dx = dy
            else:
                inside = ops.logical_and(t >= low, t <= high)
                dx = ops.where(inside, dy, ops.zeros_like(dy))
            g = scaled(dy)
            zero = ops.zeros_like(g)
            if k > WHERE_CHAIN_MAX_K:
                ids = ops.reshape(indices(t, mids), [-1])
                dv = ops.segment_sum(ops.reshape(g, [-1]), ids, num_segments=k)
            else:
                # Sum of g at or above each midpoint; value i takes the entries
                # between midpoints i - 1 and i.
                above = [ops.sum(ops.where(t >= scaled(mids[i]), g, zero)) for i in range(k - 1)]
                total = ops.sum(g)
                diffs = [a - b for a, b in zip(above, above[1:], strict=False)]
                dv = ops.stack([total - above[0], *diffs, above[-1]])
            return dx, ops.cast(dv, "float32")

        return out, grad

    return _fwd(x, values)
