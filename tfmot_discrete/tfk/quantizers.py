"""The TF-MOT behaviour of `CodebookQuantizer`: `build` and `__call__` on tf_keras.

`CodebookQuantizer` itself (its arguments, config, equality) is plain data in
`tfmot_discrete.core.quantizers`, shared with the Keras 3 path; this module
gives it what TF-MOT calls, and registers it as a TF-MOT `Quantizer` and a
tf_keras serializable (`tfmot_discrete>CodebookQuantizer`) when it loads.

Example:

>>> q = CodebookQuantizer([1, -1, 0.5, -0.5])
>>> q(tf.constant([0.9, -0.2, 0.3]), training=False, weights={}).numpy().tolist()
[1.0, -0.5, 0.5]
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import quantizers as core_quantizers
from tfmot_discrete.core.quantizers import (
    LOG_SCALE_STEP,
    SCALES,
    CodebookQuantizer,
    binary,
    get,
    power_of_two,
    ternary,
)
from tfmot_discrete.tfk import compat, ops
from tfmot_discrete.tfk._keras import keras, register

__all__ = [
    "LOG_SCALE_STEP",
    "SCALES",
    "CodebookQuantizer",
    "binary",
    "clip_to_codebook",
    "get",
    "power_of_two",
    "ternary",
    "weight_key",
]


class _LearnedValues:
    """Variable constraint: keep learned codebook values sorted and at least
    one grid step apart (`ops.project_values` without rounding)."""

    def __call__(self, v):
        return tf.cast(ops.project_values(v, snap=False), v.dtype)


class _ClipToRange:
    """Variable constraint: keep latent weights inside the codebook range."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def __call__(self, w):
        return tf.clip_by_value(w, self.low, self.high)


def build(q: CodebookQuantizer, tensor_shape, name, layer):
    """`CodebookQuantizer.build`: the clipping constraint on the layer's weight
    `name`, and the variables of a learned scale."""
    weights = {}
    latent = _find_weight(layer, name)
    if latent is not None:
        clip_to_codebook(latent, q)
    # Several weights of one layer can share a name (the kernels of
    # attention's projections): number the variables of the later ones.
    taken = {weight_key(v) for v in layer.weights}
    base, i = name, 0
    while f"{name}_log_scale" in taken or f"{name}_values" in taken:
        i += 1
        name = f"{base}_{i}"
    if q.learn_values:
        weights["values"] = layer.add_weight(
            f"{name}_values",
            shape=(q.codebook.size,),
            initializer=keras.initializers.Constant(q.initial_values()),
            constraint=_LearnedValues(),
            trainable=True,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
    if q.scale == "learned":
        # The scale is learned as a (damped) logarithm, see LOG_SCALE_STEP:
        # Adam's lr-sized steps on the scale itself drive a scale of ~0.05
        # to zero within a few steps.
        weights["log_scale"] = layer.add_weight(
            f"{name}_log_scale",
            shape=q.scale_shape(tensor_shape),
            initializer=keras.initializers.Constant(0.0),
            trainable=True,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        weights["scale_initialized"] = layer.add_weight(
            f"{name}_scale_initialized",
            shape=(),
            initializer=keras.initializers.Constant(0.0),
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
    return weights


def call(q: CodebookQuantizer, inputs, training, weights, **kwargs):
    """`CodebookQuantizer.__call__`: the projected weight."""
    # Read variables once, as a tensor: the estimators' custom gradients
    # take tensors (a distributed variable would be captured instead).
    # Project in the variable's own dtype (float32 under mixed precision,
    # where every codebook value of a float16 layer is then exact), and
    # hand the layer the dtype it computes in.
    w = _read(inputs)
    out = _quantize(q, w, training, weights)
    compute_dtype = inputs.dtype
    return out if out.dtype == compute_dtype else tf.cast(out, compute_dtype)


def _quantize(q: CodebookQuantizer, w, training, weights):
    if q.learn_values:
        return _learned_values(q, w, weights)
    values = q.codebook.values
    rank = w.shape.rank
    if q.scale is None:
        if q.stochastic and training:
            return _stochastic_ste(w, values, q.gradient)
        return ops.project_ste(w, values, q.gradient)
    if q.scale == "mean_abs":
        s = ops.mean_abs_scale(w, q.channel_axes(rank))
        if q.stochastic and training:
            return _stochastic_ste(w / s, values, q.gradient, gate_on=w) * s
        return _scaled_ste(w, s, values, q.gradient)
    # learned: which codebook value each weight takes is decided as with
    # "mean_abs" (sigma from the weights); the magnitude s per channel is
    # trained, with its exact gradient (TTQ's learned values).
    sigma = ops.mean_abs_scale(w, q.channel_axes(rank))
    log_s = _init_learned_scale(w, weights, q.channel_axes(rank))
    s = tf.exp(tf.cast(log_s, w.dtype) * LOG_SCALE_STEP)
    return _scaled_ste(w, sigma, values, q.gradient) * (s / sigma)


def _learned_values(q: CodebookQuantizer, w, weights):
    """`s_c x v[i(w / s_c)]` with the learned values `v` (on their grid; a
    straight-through gradient to the trainable vector)."""
    v = tf.convert_to_tensor(weights["values"])
    on_grid = v + tf.stop_gradient(ops.project_values(v) - v)
    lo, hi = q.codebook.low, q.codebook.high
    if q.scale is None:
        return ops.project_learned(w, on_grid, lo, hi, q.gradient)
    sigma = ops.mean_abs_scale(w, q.channel_axes(w.shape.rank))
    out = ops.project_learned(w, on_grid, lo, hi, q.gradient, scale=sigma)
    if q.scale == "mean_abs":
        return out
    log_s = _init_learned_scale(w, weights, q.channel_axes(w.shape.rank))
    return out * (tf.exp(tf.cast(log_s, w.dtype) * LOG_SCALE_STEP) / sigma)


def initialize_scale(q: CodebookQuantizer, w, weights) -> None:
    """`CodebookQuantizer.initialize_scale`."""
    if q.scale != "learned" or float(weights["scale_initialized"].numpy()) != 0.0:
        return
    w = tf.convert_to_tensor(w)
    s0 = ops.mean_abs_scale(w, q.channel_axes(w.shape.rank))
    log_s = tf.math.log(s0) / LOG_SCALE_STEP
    weights["log_scale"].assign(tf.cast(log_s, weights["log_scale"].dtype))
    weights["scale_initialized"].assign(1.0)


def quantized_scale(q: CodebookQuantizer, w, weights) -> np.ndarray:
    """`CodebookQuantizer.quantized_scale`."""
    w = tf.convert_to_tensor(w)
    if q.scale is None:
        return np.ones(q.scale_shape(w.shape), np.float32)
    if q.scale == "mean_abs":
        return ops.mean_abs_scale(w, q.channel_axes(w.shape.rank)).numpy()
    return np.exp(weights["log_scale"].numpy() * LOG_SCALE_STEP)


def _read(x):
    """A tensor holding `x`; a variable is read in its own (storage) dtype."""
    if isinstance(x, tf.Variable) or compat.is_autocast(x):
        inner = compat.storage_variable(x)
        return tf.convert_to_tensor(inner) if inner is not x else tf.convert_to_tensor(x)
    return tf.convert_to_tensor(x)


def weight_key(variable) -> str:
    """A weight's own name, without scopes or the `:0` suffix: `"dense/kernel:0"` -> `"kernel"`."""
    return variable.name.split(":")[0].split("/")[-1]


def _find_weight(layer, name):
    """The wrapped layer's weight called `name`; None when none or several are
    (a `DiscreteQuantizeConfig` then clips the weights it hands out itself)."""
    inner = getattr(layer, "layer", layer)
    found = [v for v in inner.weights if weight_key(v) == name]
    return found[0] if len(found) == 1 else None


def clip_to_codebook(variable, quantizer: CodebookQuantizer) -> None:
    """Keeps a trainable latent `variable` inside `quantizer`'s codebook range
    (a constraint the optimizer applies after each update)."""
    if variable.trainable:
        lo, hi = quantizer.codebook.low, quantizer.codebook.high
        compat.set_constraint(variable, _ClipToRange(lo, hi))


def _scaled_ste(w, s, values, gradient):
    """`s * project(w / s)`; gradient gated on the latent weight `w` itself.

    `s` is the `mean_abs` scale of `w`: it is finite exactly when `w` is, so the
    projection's NaN check reads one number per channel instead of `w` again.
    """
    finite = ops.all_finite(s)
    return ops.straight_through(
        lambda t: ops.project(t, values, scale=s, finite=finite), w, values, gradient
    )


def _stochastic_ste(u, values, gradient, gate_on=None):
    return ops.straight_through(
        lambda t: ops.stochastic_project(t, values), u, values, gradient, gate=gate_on
    )


def _init_learned_scale(w, weights, channel_axes):
    """The learned log-scale; on first use (when nothing initialized it
    before), sets it to the log of the `"mean_abs"` scale of the weights."""
    log_s, init_flag = weights["log_scale"], weights["scale_initialized"]

    def _assign():
        s0 = ops.mean_abs_scale(w, channel_axes)
        value = tf.math.log(s0) / LOG_SCALE_STEP
        updates = [log_s.assign(tf.cast(value, log_s.dtype)), init_flag.assign(1.0)]
        with tf.control_dependencies(updates):
            return tf.identity(log_s)

    if tf.executing_eagerly() and not tf.inside_function():
        if float(init_flag.numpy()) == 0.0:
            _assign()
        return tf.identity(log_s)
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False:
        # A replica cannot assign a mirrored variable inside the step: the scale
        # must have been initialized before (quantize_model does it).
        check = tf.debugging.Assert(
            init_flag > 0,
            [
                "A learned codebook scale was not initialized before distributed training: "
                "call tfmot_discrete.initialize_learned_scales(model) (quantize_model "
                "does) before fit."
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(log_s)
    return tf.cond(init_flag > 0, lambda: tf.identity(log_s), _assign)


# The plain class becomes TF-MOT's: a `Quantizer` (a virtual subclass, for
# TF-MOT's isinstance checks) and a tf_keras serializable under its old name.
core_quantizers.provide_behaviour(CodebookQuantizer, sys.modules[__name__])
tfmot.quantization.keras.quantizers.Quantizer.register(CodebookQuantizer)
register(package="tfmot_discrete")(CodebookQuantizer)
