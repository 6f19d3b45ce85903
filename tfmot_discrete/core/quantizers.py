"""The quantizer objects of both paths, as plain data: `CodebookQuantizer`
(a codebook and its options) and `Int8WeightQuantizer` (8-bit weights).

They hold, validate, compare and serialize their arguments here, with no
TensorFlow or Keras import, so that the Keras 3 path (on JAX or PyTorch too)
builds and reads them without loading TensorFlow. Their TF-MOT behaviour
(`build`, `__call__`, the scale of a weight) is the tf_keras path's:
`tfmot_discrete.tfk.quantizers` and `tfmot_discrete.tfk.int8` provide it when
they load, and register both classes as TF-MOT `Quantizer`s and tf_keras
serializables (`tfmot_discrete>CodebookQuantizer`,
`tfmot_discrete>Int8WeightQuantizer`).
"""

from __future__ import annotations

import numpy as np

from tfmot_discrete.core import learned, text
from tfmot_discrete.core.codebook import GRADIENTS, Codebook

SCALES = (None, "mean_abs", "learned")

#: A learned scale is stored as `log(scale) / LOG_SCALE_STEP`: an optimizer's
#: lr-sized step (Adam's) then changes the scale by LOG_SCALE_STEP x lr of
#: itself. Faster, it random-walks under a following BatchNormalization (which
#: makes the loss blind to it) and the moving statistics fall behind.
LOG_SCALE_STEP = 0.1

#: The mapping value (and `quantizer` argument) asking for 8-bit weights.
INT8 = "int8"
#: Largest integer of the narrow symmetric 8-bit range.
INT8_QMAX = 127

#: Class name -> the object holding that class's TF-MOT behaviour (functions
#: taking the quantizer first); filled by `tfmot_discrete.tfk` as it loads.
_BEHAVIOUR: dict = {}
#: Loads `tfmot_discrete.tfk`'s quantizers; the package sets it (the core
#: imports no TensorFlow, and nothing of `tfk`).
_LOAD = []


def provide_behaviour(cls, behaviour) -> None:
    """Gives `cls` (a class of this module) its TF-MOT behaviour: `behaviour`
    has `build(q, tensor_shape, name, layer)` and `call(q, inputs, training,
    weights, **kwargs)` (and for `CodebookQuantizer`, `initialize_scale` and
    `quantized_scale`)."""
    _BEHAVIOUR[cls.__name__] = behaviour


def set_behaviour_loader(load) -> None:
    """`load()` imports the modules that `provide_behaviour` (the TF-MOT ones)."""
    _LOAD[:] = [load]


def _behaviour(quantizer):
    """The TF-MOT behaviour of `quantizer`'s class (loaded on first use)."""
    for attempt in range(2):
        for klass in type(quantizer).__mro__:
            if klass.__name__ in _BEHAVIOUR:
                return _BEHAVIOUR[klass.__name__]
        if attempt == 0 and _LOAD:
            _LOAD[0]()
    raise RuntimeError(
        f"{type(quantizer).__name__}'s TF-MOT behaviour is not loaded: import "
        "tfmot_discrete.tfk.quantizers and tfmot_discrete.tfk.int8 (tfmot_discrete "
        "loads them on first use)."
    )


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


class CodebookQuantizer:
    """Projects a weight to the nearest value of a codebook on every forward pass.

    Forward: `w_q = s_c * project(w / s_c)`, with `s_c = 1` (`scale=None`),
    `s_c = mean|w_c|` (`"mean_abs"`, XNOR-Net) or a trainable `s_c`
    (`"learned"`: the codebook value is picked as with `"mean_abs"`, the
    magnitude per channel is trained with its exact gradient, as TTQ learns its
    values), one per output channel. Backward: a straight-through
    estimator, gated to the codebook range with `"clipped_ste"`.

    With `learn_values=True` the codebook's values themselves train (TTQ,
    LQ-Nets): one vector of values per weight, initialized from `values`,
    each value's gradient the sum of the upstream gradient over the weights
    assigned to it; the values stay sorted, distinct and on the int8 grid of
    the exported file (`tfmot_discrete.core.learned`).

    A TF-MOT `Quantizer` on tf_keras models (its `build` and `__call__` come
    from `tfmot_discrete.tfk.quantizers`), and the quantizer of the Keras 3
    path's layers on every backend.

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
        learn_values: Train the codebook's values (one vector per weight,
            in units of the channel scale). Defaults to `False`.

    Raises:
        ValueError: On a bad codebook or an unknown option.

    Example:

    >>> CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs")
    CodebookQuantizer([-1.0, -0.5, 0.5, 1.0], scale='mean_abs')

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
        learn_values=False,
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
        _check_choice("gradient", gradient, GRADIENTS)
        if not isinstance(stochastic, (bool, np.bool_)):
            raise ValueError(f"`stochastic` must be a bool. Received: stochastic={stochastic!r}")
        if not isinstance(learn_values, (bool, np.bool_)):
            raise ValueError(
                f"`learn_values` must be a bool. Received: learn_values={learn_values!r}"
            )
        if learn_values:
            learned.check_size(self.codebook.size, values)
            if stochastic:
                raise ValueError(
                    "`learn_values=True` projects to the nearest learned value; it does not "
                    "take stochastic rounding. Received: stochastic=True, learn_values=True"
                )
        self.scale = scale
        self.gradient = gradient
        self.stochastic = bool(stochastic)
        self.per_channel_axis = _normalize_axis(per_channel_axis)
        self.learn_values = bool(learn_values)

    @property
    def values(self) -> np.ndarray:
        return self.codebook.values

    def initial_values(self) -> np.ndarray:
        """The values a learned codebook starts from: `values` on the grid
        (float32; `tfmot_discrete.core.learned`)."""
        return learned.project_values(self.codebook.values)

    def codebook_of(self, weights) -> Codebook:
        """The codebook a weight with quantizer variables `weights` projects
        to: its learned values (`learn_values=True`), else `codebook`.

        Example:

        >>> q = CodebookQuantizer([1, -1, 0.5, -0.5], learn_values=True)
        >>> q.codebook_of({"values": np.array([-0.9, -0.4, 0.6, 1.1])}).values.tolist()
        [-0.90625, -0.40625, 0.59375, 1.09375]
        """
        if not self.learn_values:
            return self.codebook
        v = weights["values"]
        v = v.numpy() if hasattr(v, "numpy") else v
        return Codebook(learned.project_values(np.asarray(v, np.float32)).astype(np.float64))

    def with_channel_axes(self, axes) -> CodebookQuantizer:
        """A copy whose scale axes are `axes`, unless the user set them."""
        if self.per_channel_axis is not None:
            return self
        cfg = self.get_config()
        cfg["per_channel_axis"] = list(axes)
        return type(self).from_config(cfg)

    def channel_axes(self, rank) -> list[int]:
        """The axes of a rank-`rank` weight that keep one scale each."""
        if self.per_channel_axis is None:
            return [rank - 1] if rank else []
        return [a % rank for a in self.per_channel_axis] if rank else []

    _channel_axes = channel_axes

    def scale_shape(self, tensor_shape) -> list[int]:
        shape = list(tensor_shape)
        keep = set(self.channel_axes(len(shape)))
        return [d if i in keep else 1 for i, d in enumerate(shape)]

    def build(self, tensor_shape, name, layer):
        """TF-MOT's `Quantizer.build`: the variables of a learned scale (and
        the clipping constraint on the layer's weight `name`)."""
        return _behaviour(self).build(self, tensor_shape, name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        """TF-MOT's `Quantizer.__call__`: the projected weight (a tf.Tensor)."""
        return _behaviour(self).call(self, inputs, training, weights, **kwargs)

    def initialize_scale(self, w, weights) -> None:
        """Starts a `learned` scale at the `"mean_abs"` value of `w`, now
        (eagerly), once."""
        _behaviour(self).initialize_scale(self, w, weights)

    def quantized_scale(self, w, weights) -> np.ndarray:
        """The per-channel scale the forward pass uses for `w` (as NumPy)."""
        return _behaviour(self).quantized_scale(self, w, weights)

    def get_config(self):
        return {
            "values": [float(v) for v in self.codebook.values],
            "scale": self.scale,
            "gradient": self.gradient,
            "stochastic": self.stochastic,
            "per_channel_axis": self.per_channel_axis,
            "learn_values": self.learn_values,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, CodebookQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(repr(sorted(self.get_config().items(), key=str)))

    def __repr__(self):
        extra = "" if self.scale is None else f", scale={self.scale!r}"
        extra += ", learn_values=True" if self.learn_values else ""
        return f"CodebookQuantizer({[float(v) for v in self.codebook.values]}{extra})"


class Int8WeightQuantizer:
    """TF-MOT's 8-bit weight quantizer, per output channel for every rank.

    `LastValueQuantizer(num_bits=8, per_axis, symmetric=True,
    narrow_range=True)`: forward `w_q = step_c x round(w / step_c)` with
    `step_c = max|w_c| / 127` from the weight's values at the last training
    step; straight-through gradient inside the range. TF-MOT's per-axis
    fake quant takes rank 2 and 4 tensors only: other ranks (Conv1D, Conv3D
    kernels) are flattened to `(-1, channels)` around it, with the same result
    per channel. Its `build` and `__call__` come from `tfmot_discrete.tfk.int8`.

    Args:
        per_axis: One step per slice of the last axis (the output channel of
            Dense, Conv and the depth multiplier of DepthwiseConv); `False`
            for one step per tensor. Defaults to `True`.

    Example:

    >>> q = Int8WeightQuantizer()
    >>> Int8WeightQuantizer.from_config(q.get_config()) == q
    True
    """

    num_bits = 8
    symmetric = True
    narrow_range = True

    def __init__(self, per_axis=True):
        if not isinstance(per_axis, (bool, np.bool_)):
            raise ValueError(f"`per_axis` must be a bool. Received: per_axis={per_axis!r}")
        self.per_axis = bool(per_axis)

    def build(self, tensor_shape, name, layer):
        """TF-MOT's `Quantizer.build`: the `min_var` and `max_var` range variables."""
        return _behaviour(self).build(self, tensor_shape, name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        """TF-MOT's `Quantizer.__call__`: the 8-bit fake-quantized weight."""
        return _behaviour(self).call(self, inputs, training, weights, **kwargs)

    def steps(self, weights) -> np.ndarray:
        """The step of each channel (one value when not per axis), float64."""
        lo = np.abs(np.asarray(weights["min_var"].numpy(), np.float64))
        hi = np.abs(np.asarray(weights["max_var"].numpy(), np.float64))
        return np.maximum(lo, hi) / INT8_QMAX

    def get_config(self):
        return {"per_axis": self.per_axis}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Int8WeightQuantizer) and self.per_axis == other.per_axis

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None

    def __repr__(self):
        return f"Int8WeightQuantizer(per_axis={self.per_axis})"


def int8_quantizer_for(channel_axes) -> Int8WeightQuantizer:
    """Per-channel when the last axis is among the weight's output-channel axes
    (so each stored channel has one step), else per-tensor."""
    return Int8WeightQuantizer(per_axis=-1 in list(channel_axes))


def is_int8(value) -> bool:
    """The `"int8"` mapping value."""
    return isinstance(value, str) and value == INT8


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


def indices_of(quantizer: CodebookQuantizer, projected, scale, codebook=None) -> np.ndarray:
    """Index of the codebook value of each projected weight, given the scale
    it was projected with (both paths read their codes through it), in
    `codebook` (learned values; defaults to the quantizer's).

    Example:

    >>> q = CodebookQuantizer([1, -1, 0.5, -0.5])
    >>> indices_of(q, np.array([[0.5, -2.0]]), np.array([1.0, 2.0])).tolist()
    [[2, 0]]
    """
    q = np.asarray(projected, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    codebook = quantizer.codebook if codebook is None else codebook
    return codebook.index_numpy(q / s)
