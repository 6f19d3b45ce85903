"""8-bit recurrent state: an `LSTM` and a `GRU` that compute with the
integers of their full-integer file (`quantize_model(..., activations="int8")`).

A `full_int8` file runs a recurrent layer unrolled: per time step, a
FULLY_CONNECTED for the input and one for the state, then ADD, MUL,
LOGISTIC and TANH for the gates, each output an 8-bit tensor. A Keras LSTM
computes all of that in float, and an 8-bit cell state is where its file
loses most (`benchmarks/recurrent_int8.py`: calibrated ranges agree with
Keras on 93.7 % of the test signals, these fake-quantized ones on 99.2 %).

`Int8LSTM` and `Int8GRU` are `LSTM` and `GRU` with the same config and
weights whose `call` unrolls the steps and fake-quantizes each of those
tensors: one range per tensor, shared by every step, set from the first
training batch's extremes and then moved by each batch's (a moving average;
a batch computes with the ranges of the batches before it); sigmoid and
tanh outputs on the fixed ranges of int8 LOGISTIC (`[0, 255/256]`) and TANH
(`[-1, 127/128]`). The layer's output is the 8-bit hidden state, so no
other range follows it. The export converts them from these ranges
(`tflite_export`), and `strip_quantization` gives back a plain `LSTM` or
`GRU`.

`with_int8_state(model)` swaps in these layers where the form allows it
(`why_float_state` says why not otherwise: such a layer keeps a float state
in training and its file's ranges are calibrated at export).
"""

from __future__ import annotations

import contextlib
import contextvars

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfmot_discrete.tfk._keras import keras, register

_qk = tfmot.quantization.keras

_L = keras.layers

#: The fixed output ranges of int8 LOGISTIC (scale 1/256, zero point -128) and TANH (1/128, 0).
SIGMOID_RANGE = (0.0, 255 / 256)
TANH_RANGE = (-1.0, 127 / 128)
#: How much of a range one training batch moves (after the first, which sets it).
RANGE_MOMENTUM = 0.99
#: A range before any training batch (TF-MOT's initial activation range).
INITIAL_RANGE = (-6.0, 6.0)


def _fixed(x, rng):
    return tf.quantization.fake_quant_with_min_max_args(x, *rng, num_bits=8)


class _Ranges:
    """The fake quantization of one call: every point's range as the layer's
    variables hold it (the ranges of the batches before this one); in
    training, each point's tensors of every step are kept for `update`."""

    def __init__(self, layer, training: bool):
        self.layer = layer
        self.training = training
        stored = tf.stop_gradient(tf.convert_to_tensor(layer.activation_ranges))
        self.ranges = dict(zip(layer.POINTS, tf.unstack(stored), strict=True))
        self.seen = {point: [] for point in layer.POINTS}

    def __call__(self, x, point: str):
        if self.training:
            self.seen[point].append(x)
        lo, hi = tf.unstack(self.ranges[point])
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)

    def update(self) -> None:
        """Moves the ranges by this batch's extremes (0 always inside): the
        first batch sets them, the others move them by `1 - RANGE_MOMENTUM`."""
        seen = []
        for point in self.layer.POINTS:
            values = tf.stop_gradient(tf.stack(self.seen[point]))
            seen.append(
                tf.stack(
                    [tf.minimum(tf.reduce_min(values), 0.0), tf.maximum(tf.reduce_max(values), 0.0)]
                )
            )
        seen = tf.stack(seen)
        stored = self.layer.activation_ranges
        moved = RANGE_MOMENTUM * stored + (1 - RANGE_MOMENTUM) * seen
        stored.assign(tf.where(tf.equal(self.layer.range_batches, 0), seen, moved))
        self.layer.range_batches.assign_add(1)


class _Int8State:
    """What `Int8LSTM` and `Int8GRU` share: the range variables and the loop."""

    #: The tensors of one step with a range of their own.
    POINTS: tuple[str, ...] = ()

    def build(self, input_shape):
        super().build(input_shape)  # the plain layer's cell and weights
        initial = [list(INITIAL_RANGE)] * len(self.POINTS)
        self.activation_ranges = self.add_weight(
            name="activation_ranges",
            shape=(len(self.POINTS), 2),
            initializer=keras.initializers.Constant(initial),
            trainable=False,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.range_batches = self.add_weight(
            name="range_batches",
            shape=(),
            dtype=tf.int64,
            initializer="zeros",
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def call(self, inputs, mask=None, training=None, initial_state=None):
        if mask is not None or initial_state is not None:
            what = "a mask" if mask is not None else "an initial_state"
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) computes its steps with 8-bit "
                f"states from zero and was called with {what}, which it does not take. Quantize "
                "the model with activations=None for this layer's form."
            )
        if isinstance(training, bool) or training is None:
            return self._unrolled(inputs, bool(training))
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: self._unrolled(inputs, True), lambda: self._unrolled(inputs, False)
        )

    # A Python loop over the steps and Python branches on Python values only:
    # nothing for AutoGraph to convert (it fails on `super()` in what this
    # calls). Not on `call`: the wrapper reads `call`'s arguments (`training`).
    @tf.autograph.experimental.do_not_convert
    def _unrolled(self, inputs, training: bool):
        q = _Ranges(self, training)
        steps = tf.unstack(inputs, axis=1)  # UNPACK: TFLM slices at most 4-D tensors
        h = tf.zeros((tf.shape(inputs)[0], self.units), inputs.dtype)
        state = self._initial(h)
        outputs = []
        for x in reversed(steps) if self.go_backwards else steps:
            h, state = self._step(x, h, state, q)
            outputs.append(h)
        if training:
            q.update()
        return tf.stack(outputs, axis=1) if self.return_sequences else h


def _steps(layer):
    """The number of time steps of `layer`'s input, or None (free, or never called)."""
    try:
        return layer.input_shape[1]
    except AttributeError:
        return None


def _masked(layer) -> bool:
    """True when `layer`'s input carries a Keras mask (after `Embedding(mask_zero=True)`,
    `Masking`): the layer is then called with it."""
    try:
        inputs = tf.nest.flatten(layer.input)
    except AttributeError:
        return False
    return any(getattr(t, "_keras_mask", None) is not None for t in inputs)


def why_float_state(layer) -> str | None:
    """Why `layer` (an `LSTM` or `GRU`) cannot compute with 8-bit states, or None."""
    checks = (
        (layer.activation.__name__ == "tanh", "activation is not tanh"),
        (layer.recurrent_activation.__name__ == "sigmoid", "recurrent_activation is not sigmoid"),
        (layer.use_bias, "use_bias=False"),
        (not layer.stateful, "stateful=True"),
        (not layer.return_state, "return_state=True"),
        (not layer.time_major, "time_major=True"),
        (layer.dropout == 0 and layer.recurrent_dropout == 0, "dropout in the cell"),
        (not isinstance(layer, _L.GRU) or layer.reset_after, "reset_after=False"),
        (not _masked(layer), "its input carries a mask"),
        (_steps(layer) is not None, "no fixed number of time steps"),
    )
    return next((why for ok, why in checks if not ok), None)


def _takes_int8_state(layer) -> bool:
    """True for a plain `LSTM` or `GRU` that `with_int8_state` swaps."""
    return type(layer) in INT8_STATE and why_float_state(layer) is None


@register(package="tfmot_discrete")
class Int8LSTM(_Int8State, _L.LSTM):
    """An `LSTM` computing with the 8-bit tensors of its full-integer file
    (module docstring): `i, f, o = sigmoid`, `g = tanh` of the split sum
    `x W + b + h U`, `c = f c + i g`, `h = o tanh(c)`; every product, sum and
    state fake-quantized."""

    POINTS = ("xw", "hu", "z", "fc", "ig", "c", "h")
    #: `core.specs` reads its weights as an LSTM's.
    reads_weights_as = _L.LSTM

    def _initial(self, h):
        return h  # the cell state

    def _step(self, x, h, c, q):
        cell = self.cell
        xw = q(tf.matmul(x, cell.kernel) + cell.bias, "xw")
        hu = q(tf.matmul(h, cell.recurrent_kernel), "hu")
        z = tf.split(q(xw + hu, "z"), 4, axis=1)
        i, f, o = (_fixed(tf.sigmoid(z[k]), SIGMOID_RANGE) for k in (0, 1, 3))
        g = _fixed(tf.tanh(z[2]), TANH_RANGE)
        c = q(q(f * c, "fc") + q(i * g, "ig"), "c")
        return q(o * _fixed(tf.tanh(c), TANH_RANGE), "h"), c


@register(package="tfmot_discrete")
class Int8GRU(_Int8State, _L.GRU):
    """A `GRU` (`reset_after=True`) computing with the 8-bit tensors of its
    full-integer file (module docstring): `z, r = sigmoid` and
    `h~ = tanh(x W_h + b_h + r (h U_h + b'_h))`, `h = z h + (1 - z) h~`."""

    POINTS = ("xw", "hu", "sz", "sr", "rh", "sh", "zh", "omz", "omzh", "h")
    reads_weights_as = _L.GRU

    def _initial(self, h):
        return None

    def _step(self, x, h, _, q):
        cell = self.cell
        xz, xr, xh = tf.split(q(tf.matmul(x, cell.kernel) + cell.bias[0], "xw"), 3, axis=1)
        hz, hr, hh = tf.split(
            q(tf.matmul(h, cell.recurrent_kernel) + cell.bias[1], "hu"), 3, axis=1
        )
        z = _fixed(tf.sigmoid(q(xz + hz, "sz")), SIGMOID_RANGE)
        r = _fixed(tf.sigmoid(q(xr + hr, "sr")), SIGMOID_RANGE)
        cand = _fixed(tf.tanh(q(xh + q(r * hh, "rh"), "sh")), TANH_RANGE)
        keep = q(z * h, "zh")
        return q(keep + q(q(1.0 - z, "omz") * cand, "omzh"), "h"), None


#: The 8-bit-state class of each plain class.
INT8_STATE = {_L.LSTM: Int8LSTM, _L.GRU: Int8GRU}


#: Set by `float_states`: `with_int8_state` changes nothing.
_KEEP_FLOAT = contextvars.ContextVar("keep_float_states", default=False)


@contextlib.contextmanager
def float_states():
    """Within it, `quantize_model(..., activations="int8")` keeps LSTM and GRU
    layers plain (a Keras 3 model's tf_keras twin, which must compute what
    the Keras 3 model computes: `tools.bridge`)."""
    token = _KEEP_FLOAT.set(True)
    try:
        yield
    finally:
        _KEEP_FLOAT.reset(token)


def with_int8_state(model):
    """`model` with each `LSTM` and `GRU` that can (`why_float_state`) an
    `Int8LSTM` / `Int8GRU`: a copy holding the same weights, or `model`
    itself when no layer changes (or within `float_states`)."""
    if _KEEP_FLOAT.get():
        return model
    swap = {layer.name for layer in model.layers if _takes_int8_state(layer)}
    if not swap:
        return model

    def _clone(layer):
        cls = INT8_STATE[type(layer)] if layer.name in swap else type(layer)
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=_clone)
    for new in copy.layers:
        old = model.get_layer(new.name)
        if new.name in swap:
            new.cell.set_weights(old.cell.get_weights())
        elif old.weights:
            new.set_weights(old.get_weights())
    return copy


def eight_bit_state(model, would=False) -> set[str]:
    """The names of `model`'s `Int8LSTM` and `Int8GRU` layers (wrapped or
    not); `would`: also of the `LSTM` and `GRU` layers that `with_int8_state`
    would make so."""
    names = set()
    for layer in model.layers:
        # A wrapper's inner layer (not a Bidirectional's or TimeDistributed's).
        inner = layer.layer if isinstance(layer, _qk.QuantizeWrapper) else layer
        if isinstance(inner, _Int8State) or (would and _takes_int8_state(inner)):
            names.add(inner.name)
    return names
