"""A weight's quantized value on Keras 3: the `CodebookQuantizer` or `"int8"`
semantics of the tf_keras path, computed with `keras.ops`.

The quantizer objects are the package's own (`td.CodebookQuantizer`, the
presets): they hold the codebook and the options on both paths. What a
quantizer needs besides the weight (a learned scale, an 8-bit range) lives in
a `WeightState`, whose variables the layer holding the weight creates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmot_discrete.core.quantizers import LOG_SCALE_STEP, CodebookQuantizer, Int8WeightQuantizer
from tfmot_discrete.keras3 import ops as qops
from tfmot_discrete.keras3._k3 import backend, keras, ops


def channel_axes(quantizer: CodebookQuantizer, rank: int) -> list[int]:
    """The axes that keep one scale per channel (the last one by default)."""
    if not rank:
        return []
    if quantizer.per_channel_axis is None:
        return [rank - 1]
    return [a % rank for a in quantizer.per_channel_axis]


def int8_axes(per_axis: bool, rank: int) -> list[int]:
    """Axes of one 8-bit range each: the last one per channel, else none."""
    return [rank - 1] if per_axis and rank else []


class ClipToRange(keras.constraints.Constraint):
    """Keeps latent weights inside the codebook range (applied after each update)."""

    def __init__(self, low, high):
        self.low, self.high = float(low), float(high)

    def __call__(self, w):
        if backend() == "torch":
            # `ops.clip` turns the bounds into tensors; PyTorch clamps several
            # times faster with number bounds (the same values).
            import torch  # noqa: PLC0415  (the PyTorch backend only)

            t = ops.convert_to_tensor(w)
            if isinstance(w, keras.Variable) and not torch.is_grad_enabled():
                # The optimizer's update (under `no_grad`) assigns the result
                # to `w` next: clamped in place, that assignment copies nothing.
                return t.clamp_(self.low, self.high)
            return t.clamp(self.low, self.high)
        return ops.clip(w, self.low, self.high)

    def get_config(self):
        return {"low": self.low, "high": self.high}


class LearnedValues(keras.constraints.Constraint):
    """Keeps learned codebook values sorted and at least one grid step apart
    (`ops.project_values` without rounding; applied after each update)."""

    def __call__(self, v):
        return ops.cast(qops.project_values(v, snap=False), v.dtype)


@dataclasses.dataclass
class WeightState:
    """One quantized weight of a layer: its quantizer and the quantizer's variables.

    `quantizer` is a `CodebookQuantizer` (with the weight's channel axes) or
    an `Int8WeightQuantizer` (its `per_axis` only is used here).
    `variables` holds `values` (learned codebook values), `log_scale` (a
    learned scale) or `min_var`/`max_var` (an 8-bit range), named as the
    tf_keras path names them.
    """

    name: str
    quantizer: object
    variables: dict


def make_state(layer, weight, quantizer) -> WeightState:
    """Creates on `layer` the variables `quantizer` needs for `weight`, and the
    clipping constraint on `weight`."""
    shape = tuple(weight.shape)
    rank = len(shape)
    name = weight.name.split("/")[-1]
    variables = {}
    if isinstance(quantizer, Int8WeightQuantizer):
        rshape = (shape[-1],) if quantizer.per_axis and rank else ()
        for key in ("min_var", "max_var"):
            variables[key] = layer.add_weight(
                name=f"{name}_{key}", shape=rshape, initializer="zeros", trainable=False
            )
        return WeightState(name, quantizer, variables)
    if quantizer.learn_values:
        variables["values"] = layer.add_weight(
            name=f"{name}_values",
            shape=(quantizer.codebook.size,),
            initializer=keras.initializers.Constant(quantizer.initial_values()),
            constraint=LearnedValues(),
            trainable=True,
        )
    if quantizer.scale == "learned":
        variables["log_scale"] = layer.add_weight(
            name=f"{name}_log_scale",
            shape=tuple(quantizer.scale_shape(shape)),
            initializer="zeros",
            trainable=True,
        )
    if weight.trainable:
        weight.constraint = ClipToRange(quantizer.codebook.low, quantizer.codebook.high)
    return WeightState(name, quantizer, variables)


def quantize(state: WeightState, w, training, seed=None):
    """The weight as the layer computes with it (a tensor, differentiable by
    the quantizer's estimator)."""
    q = state.quantizer
    if isinstance(q, Int8WeightQuantizer):
        return _int8(state, w, training)
    if q.learn_values:
        return _learned_values(state, w)
    values = q.codebook.values
    lo, hi = q.codebook.low, q.codebook.high
    stochastic = q.stochastic and training
    if q.scale is None:
        if stochastic:
            return qops.straight_through(
                lambda t: qops.stochastic_project(t, values, seed), w, lo, hi, q.gradient
            )
        return qops.project_straight_through(w, values, lo, hi, q.gradient)
    axes = channel_axes(q, len(w.shape))
    sigma = qops.mean_abs_scale(w, axes)
    if q.scale == "mean_abs" and stochastic:
        return (
            qops.straight_through(
                lambda t: qops.stochastic_project(t, values, seed),
                w / sigma,
                lo,
                hi,
                q.gradient,
                gate=w,
            )
            * sigma
        )
    out = qops.project_straight_through(w, values, lo, hi, q.gradient, scale=sigma)
    return _scaled(state, out, w, sigma)


def _scaled(state: WeightState, out, w, sigma):
    """A projection `out` made at the `mean_abs` scale `sigma`, at the
    quantizer's scale: itself for `"mean_abs"`, else rescaled to the learned
    scale."""
    if state.quantizer.scale == "mean_abs":
        return out
    s = ops.exp(ops.cast(state.variables["log_scale"], w.dtype) * LOG_SCALE_STEP)
    return out * (s / sigma)


def _learned_values(state: WeightState, w):
    """`s_c x v[i(w / s_c)]` with the learned values `v` on their grid (a
    straight-through gradient to the trainable vector)."""
    q = state.quantizer
    v = ops.convert_to_tensor(state.variables["values"])
    on_grid = v + ops.stop_gradient(qops.project_values(v) - v)
    lo, hi = q.codebook.low, q.codebook.high
    if q.scale is None:
        return qops.project_learned(w, on_grid, lo, hi, q.gradient)
    sigma = qops.mean_abs_scale(w, channel_axes(q, len(w.shape)))
    out = qops.project_learned(w, on_grid, lo, hi, q.gradient, scale=sigma)
    return _scaled(state, out, w, sigma)


def _int8(state, w, training):
    rank = len(w.shape)
    axes = [a for a in range(rank) if a not in int8_axes(state.quantizer.per_axis, rank)]
    lo_var, hi_var = state.variables["min_var"], state.variables["max_var"]
    if training:
        wt = ops.stop_gradient(w)
        lo = ops.min(wt, axis=axes) if axes else wt
        hi = ops.max(wt, axis=axes) if axes else wt
        lo, hi = ops.minimum(lo, -hi), ops.maximum(hi, -lo)
        lo_var.assign(lo)
        hi_var.assign(hi)
    else:
        lo, hi = lo_var, hi_var
    r = ops.maximum(ops.abs(lo), ops.abs(hi))
    values, nlo, nhi = qops.fake_quant_int8(ops.stop_gradient(w), r)
    inside = ops.logical_and(w >= nlo, w <= nhi)
    delta = w - ops.stop_gradient(w)
    return ops.stop_gradient(values) + ops.where(inside, delta, ops.zeros_like(delta))


def initialize(state: WeightState, w) -> None:
    """Sets a learned scale to the `"mean_abs"` scale of `w`, and an 8-bit
    range to `w`'s, now (the tf_keras path does the same in `quantize_model`)."""
    q = state.quantizer
    if isinstance(q, Int8WeightQuantizer):
        quantize(state, ops.convert_to_tensor(w), training=True)
        return
    if q.scale == "learned":
        w = ops.convert_to_tensor(w)
        s0 = qops.mean_abs_scale(w, channel_axes(q, len(w.shape)))
        state.variables["log_scale"].assign(ops.log(s0) / LOG_SCALE_STEP)


def scale_of(state: WeightState, w) -> np.ndarray:
    """The per-channel scale the forward pass uses for `w` (NumPy, float32)."""
    q = state.quantizer
    w = ops.convert_to_tensor(w)
    if q.scale is None:
        return np.ones(q.scale_shape(w.shape), np.float32)
    if q.scale == "mean_abs":
        return ops.convert_to_numpy(qops.mean_abs_scale(w, channel_axes(q, len(w.shape))))
    log_s = ops.convert_to_numpy(state.variables["log_scale"])
    return np.exp(log_s * LOG_SCALE_STEP).astype(np.float32)
