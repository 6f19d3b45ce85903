"""`CodebookQuantizer`: a TF-MOT `Quantizer` that projects weights to a codebook."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.core import text
from tfmot_discrete.core.codebook import Codebook
from tfmot_discrete.tfk import compat, ops
from tfmot_discrete.tfk._keras import keras, register

SCALES = (None, "mean_abs", "learned")

#: A learned scale is stored as `log(scale) / LOG_SCALE_STEP`: an optimizer's
#: lr-sized step (Adam's) then changes the scale by LOG_SCALE_STEP x lr of
#: itself. Faster, it random-walks under a following BatchNormalization (which
#: makes the loss blind to it) and the moving statistics fall behind.
LOG_SCALE_STEP = 0.1


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")


def _normalize_axis(per_channel_axis):
    if per_channel_axis is None:
        return None
    if isinstance(per_channel_axis, (bool, np.bool_)):
        raise ValueError(
            "`per_channel_axis` must be None, an int or a list of ints. "
            f"Received: per_channel_axis={per_channel_axis!r}"
        )
    if isinstance(per_channel_axis, (int, np.integer)):
        return [int(per_channel_axis)]
    if isinstance(per_channel_axis, (list, tuple)) and all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in per_channel_axis
    ):
        return [int(a) for a in per_channel_axis]
    raise ValueError(
        "`per_channel_axis` must be None, an int or a list of ints. "
        f"Received: per_channel_axis={per_channel_axis!r}"
    )


class _ClipToRange:
    """Variable constraint: keep latent weights inside the codebook range."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def __call__(self, w):
        return tf.clip_by_value(w, self.low, self.high)


@register(package="tfmot_discrete")
class CodebookQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Projects a weight to the nearest value of a codebook on every forward pass.

    Forward: `w_q = s_c * project(w / s_c)`, with `s_c = 1` (`scale=None`),
    `s_c = mean|w_c|` (`"mean_abs"`, XNOR-Net) or a trainable `s_c`
    (`"learned"`: the codebook value is picked as with `"mean_abs"`, the
    magnitude per channel is trained with its exact gradient, as TTQ learns its
    values), one per output channel. Backward: a straight-through
    estimator, gated to the codebook range with `"clipped_ste"`.

    Args:
        values: The codebook: at least 2 distinct finite numbers, any order.
        scale: `None` (the values exactly as given), `"mean_abs"` or
            `"learned"`. Defaults to `None`.
        gradient: `"clipped_ste"` or `"ste"`. Defaults to `"clipped_ste"`.
        stochastic: Round stochastically during training (BinaryConnect).
            Defaults to `False`.
        per_channel_axis: Output-channel axis (or axes) of the weight for the
            scale; `[]` for one scale per tensor. Defaults to `None`: the
            layer's output-channel axes (the last axis outside a layer).

    Raises:
        ValueError: On a bad codebook or an unknown option.

    Example:

    >>> q = CodebookQuantizer([1, -1, 0.5, -0.5])
    >>> q(tf.constant([0.9, -0.2, 0.3]), training=False, weights={}).numpy().tolist()
    [1.0, -0.5, 0.5]

    References:
        Courbariaux et al., BinaryConnect (2015); Rastegari et al., XNOR-Net
        (2016); Zhu et al., Trained Ternary Quantization (2017).
    """

    def __init__(
        self,
        values,
        scale=None,
        gradient="clipped_ste",
        stochastic=False,
        per_channel_axis=None,
    ):
        self.codebook = values if isinstance(values, Codebook) else Codebook(values)
        with np.errstate(over="ignore"):
            as_f32 = self.codebook.values.astype(np.float32)
        shown = [float(v) for v in self.codebook.values[: text.SHOWN_VALUES]]
        if not np.all(np.isfinite(as_f32)) or np.unique(as_f32).size != self.codebook.size:
            raise ValueError(
                "`values` must be distinct float32 numbers (weights are float32): "
                f"|v| <= {float(np.finfo(np.float32).max):.3g} and no two equal after "
                f"rounding to float32. Received: values={shown}{' ...' if self.codebook.size > text.SHOWN_VALUES else ''}"
            )
        _check_choice("scale", scale, SCALES)
        _check_choice("gradient", gradient, ops.GRADIENTS)
        if not isinstance(stochastic, (bool, np.bool_)):
            raise ValueError(f"`stochastic` must be a bool. Received: stochastic={stochastic!r}")
        self.scale = scale
        self.gradient = gradient
        self.stochastic = bool(stochastic)
        self.per_channel_axis = _normalize_axis(per_channel_axis)

    @property
    def values(self) -> np.ndarray:
        return self.codebook.values

    def with_channel_axes(self, axes) -> CodebookQuantizer:
        """A copy whose scale axes are `axes`, unless the user set them."""
        if self.per_channel_axis is not None:
            return self
        cfg = self.get_config()
        cfg["per_channel_axis"] = list(axes)
        return type(self).from_config(cfg)

    def _channel_axes(self, rank):
        if self.per_channel_axis is None:
            return [rank - 1] if rank else []
        return [a % rank for a in self.per_channel_axis] if rank else []

    def scale_shape(self, tensor_shape) -> list[int]:
        shape = list(tensor_shape)
        keep = set(self._channel_axes(len(shape)))
        return [d if i in keep else 1 for i, d in enumerate(shape)]

    def build(self, tensor_shape, name, layer):
        weights = {}
        latent = _find_weight(layer, name)
        if latent is not None:
            clip_to_codebook(latent, self)
        if self.scale == "learned":
            # Several weights of one layer can share a name (the kernels of
            # attention's projections): number the scales of the later ones.
            taken = {weight_key(v) for v in layer.weights}
            base, i = name, 0
            while f"{name}_log_scale" in taken:
                i += 1
                name = f"{base}_{i}"
            # The scale is learned as a (damped) logarithm, see LOG_SCALE_STEP:
            # Adam's lr-sized steps on the scale itself drive a scale of ~0.05
            # to zero within a few steps.
            weights["log_scale"] = layer.add_weight(
                f"{name}_log_scale",
                shape=self.scale_shape(tensor_shape),
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

    def __call__(self, inputs, training, weights, **kwargs):
        # Read variables once, as a tensor: the estimators' custom gradients
        # take tensors (a distributed variable would be captured instead).
        # Project in the variable's own dtype (float32 under mixed precision,
        # where every codebook value of a float16 layer is then exact), and
        # hand the layer the dtype it computes in.
        w = _read(inputs)
        out = self._quantize(w, training, weights)
        compute_dtype = inputs.dtype
        return out if out.dtype == compute_dtype else tf.cast(out, compute_dtype)

    def _quantize(self, w, training, weights):
        values = self.codebook.values
        rank = w.shape.rank
        if self.scale is None:
            if self.stochastic and training:
                return _stochastic_ste(w, values, self.gradient)
            return ops.project_ste(w, values, self.gradient)
        if self.scale == "mean_abs":
            s = ops.mean_abs_scale(w, self._channel_axes(rank))
            if self.stochastic and training:
                return _stochastic_ste(w / s, values, self.gradient, gate_on=w) * s
            return _scaled_ste(w, s, values, self.gradient)
        # learned: which codebook value each weight takes is decided as with
        # "mean_abs" (sigma from the weights); the magnitude s per channel is
        # trained, with its exact gradient (TTQ's learned values).
        sigma = ops.mean_abs_scale(w, self._channel_axes(rank))
        log_s = _init_learned_scale(w, weights, self._channel_axes(rank))
        s = tf.exp(tf.cast(log_s, w.dtype) * LOG_SCALE_STEP)
        return _scaled_ste(w, sigma, values, self.gradient) * (s / sigma)

    def initialize_scale(self, w, weights) -> None:
        """Starts a `learned` scale at the `"mean_abs"` value of `w`, now
        (eagerly), once."""
        if self.scale != "learned" or float(weights["scale_initialized"].numpy()) != 0.0:
            return
        w = tf.convert_to_tensor(w)
        s0 = ops.mean_abs_scale(w, self._channel_axes(w.shape.rank))
        log_s = tf.math.log(s0) / LOG_SCALE_STEP
        weights["log_scale"].assign(tf.cast(log_s, weights["log_scale"].dtype))
        weights["scale_initialized"].assign(1.0)

    def quantized_scale(self, w, weights) -> np.ndarray:
        """The per-channel scale the forward pass uses for `w` (as NumPy)."""
        w = tf.convert_to_tensor(w)
        if self.scale is None:
            return np.ones(self.scale_shape(w.shape), np.float32)
        if self.scale == "mean_abs":
            return ops.mean_abs_scale(w, self._channel_axes(w.shape.rank)).numpy()
        return np.exp(weights["log_scale"].numpy() * LOG_SCALE_STEP)

    def get_config(self):
        return {
            "values": [float(v) for v in self.codebook.values],
            "scale": self.scale,
            "gradient": self.gradient,
            "stochastic": self.stochastic,
            "per_channel_axis": self.per_channel_axis,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, CodebookQuantizer) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(repr(sorted(self.get_config().items(), key=str)))

    def __repr__(self):
        extra = "" if self.scale is None else f", scale={self.scale!r}"
        return f"CodebookQuantizer({[float(v) for v in self.codebook.values]}{extra})"


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


def binary(scale=None, **kwargs) -> CodebookQuantizer:
    """`{-1, +1}` weights. Example: `binary(scale="mean_abs")` is XNOR-Net."""
    return CodebookQuantizer([-1.0, 1.0], scale=scale, **kwargs)


def ternary(scale="mean_abs", **kwargs) -> CodebookQuantizer:
    """`{-1, 0, +1}` weights, by default times `mean|w|` per output channel."""
    return CodebookQuantizer([-1.0, 0.0, 1.0], scale=scale, **kwargs)


def power_of_two(bits=3, scale=None, **kwargs) -> CodebookQuantizer:
    """Signed powers of two, `±2^0 ... ±2^-(2^(bits-1) - 1)`: `2^bits` values.

    `bits=3` gives `{±1, ±0.5, ±0.25, ±0.125}`.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be an int from 2 to 8. Received: bits={bits!r}")
    n = 2 ** (int(bits) - 1)
    mags = [2.0**-i for i in range(n)]
    return CodebookQuantizer([m for m in mags] + [-m for m in mags], scale=scale, **kwargs)


def get(identifier):
    """Turns `identifier` into a `CodebookQuantizer` (or `None`).

    Accepts `None`, a preset name (`"binary"`, `"ternary"`, `"power_of_two"`),
    a list of values, a config dict or a `CodebookQuantizer`.
    """
    if identifier is None or isinstance(identifier, CodebookQuantizer):
        return identifier
    if isinstance(identifier, str):
        presets = {"binary": binary, "ternary": ternary, "power_of_two": power_of_two}
        if identifier not in presets:
            raise ValueError(
                f"Unknown quantizer name; accepted: {sorted(presets)}. "
                f"Received: identifier={identifier!r}"
            )
        return presets[identifier]()
    if isinstance(identifier, dict):
        cfg = identifier.get("config", identifier)
        return CodebookQuantizer.from_config(cfg)
    if isinstance(identifier, (list, tuple, np.ndarray)):
        return CodebookQuantizer(identifier)
    raise ValueError(
        "Could not interpret quantizer identifier: expected None, a preset name, "
        f"a list of values, a dict or a CodebookQuantizer. Received: identifier={identifier!r}"
    )
