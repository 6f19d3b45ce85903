"""Recurrent and attention layers on their way to a `.tflite` file.

TFLite's converter cannot lower a Keras recurrent layer whose loop runs a
number of steps unknown at conversion time ("'tf.TensorListReserve' op
requires element_shape to be static"). Measured on tf_keras 2.21 with a
batch of one and a fixed number of steps:

- `LSTM` is fused into `UNIDIRECTIONAL_SEQUENCE_LSTM`: its kernels split
  into eight gate tensors, its outputs 14 % of the output range away from
  Keras in float, and its int8 weights one scale per tensor (no codebook
  times per-channel scale is exact then);
- `GRU`, `SimpleRNN` and `ConvLSTM*D` become `WHILE` loops whose weights are
  loop inputs: the weight-only quantizer leaves them float32.

So `conversion_model` unrolls every recurrent layer (Keras' own
`unroll=True`; convolutional ones step by step, which Keras refuses) and
fixes the batch at one sample, as the interpreters run it. Every kernel then
feeds `FULLY_CONNECTED` (or `CONV_2D`/`CONV_3D`) operators, which every
format stores per output channel, the `int4` writer and TFLM's `DECODE`
included; the outputs match Keras within float rounding.

Unrolled, one weight feeds one operator per time step, and every format
keeps one tensor for it, read by all of them (in `full_int8`, each operator
with its own int32 bias).

This module imports no other module of the package but `errors`: `exact`
reads its weight layouts, `pipeline` its conversion model.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tflite_export.errors import ExportError
from tfmot_discrete.core.specs import weights_class
from tfmot_discrete.tfk import keras

_L = keras.layers
#: Recurrent layers Keras unrolls itself (`unroll=True`).
RECURRENT = (_L.LSTM, _L.GRU, _L.SimpleRNN)
#: Convolutional recurrent layers, unrolled here (Keras refuses `unroll`).
CONV_RECURRENT = (_L.ConvLSTM1D, _L.ConvLSTM2D, _L.ConvLSTM3D)
#: Recurrent and attention layers.
_SEQUENCE = (*RECURRENT, *CONV_RECURRENT, _L.Bidirectional, _L.MultiHeadAttention)
#: Layers whose conversion needs fixed input shapes (with a free batch,
#: `TimeDistributed` and attention reshape through SHAPE/FILL operators,
#: which TFLM cannot allocate).
_STATIC = (*_SEQUENCE, _L.TimeDistributed)
#: Convolutional recurrent cells compute each gate with its own convolution
#: of one quarter of the kernel (i, f, c, o along the last axis).
GATES = ("i", "f", "c", "o")


def _inner(layer):
    """The layers a wrapper runs (`Bidirectional`, `TimeDistributed`), else itself."""
    if isinstance(layer, _L.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    if isinstance(layer, _L.TimeDistributed):
        return [layer.layer]
    return [layer]


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
            yield from (x for x in _inner(layer) if x is not layer)


def needs_preparation(model, computed=frozenset()) -> bool:
    """True for a model with a recurrent, attention or `TimeDistributed` layer
    (other than those named in `computed`)."""
    return any(
        isinstance(layer, _STATIC) and layer.name not in computed for layer in _all_layers(model)
    )


def _refuse(layer, what: str, todo: str):
    return ExportError(
        f"Layer {layer.name!r} ({type(layer).__name__}) cannot be exported: {what} {todo}"
    )


def _check_recurrent(layer, shape) -> None:
    if getattr(layer, "stateful", False):
        raise _refuse(
            layer,
            "stateful=True carries its state from one call to the next in variables, "
            "which a TFLite file does not update.",
            "Rebuild it with stateful=False (and pass the state as an input if needed).",
        )
    steps = shape[1] if shape is not None and len(shape) > 1 else None
    if steps is None:
        raise _refuse(
            layer,
            f"its input has no fixed number of time steps (shape {tuple(shape or ())}). "
            "A loop over a length unknown at conversion time needs TensorList and WHILE "
            "operators that the TFLite converter cannot lower; a fixed length unrolls it "
            "into FULLY_CONNECTED (CONV_2D) operators.",
            "Give the model's Input a fixed length, e.g. keras.Input(shape=(40, 8)).",
        )


class UnrolledConvRNN(_L.Layer):
    """A convolutional recurrent layer run step by step (Keras refuses
    `unroll=True` for them); holds the layer, so its weights are the layer's."""

    def __init__(self, rnn, **kwargs):
        super().__init__(name=rnn.name, **kwargs)
        self.rnn = rnn

    def build(self, input_shape):
        self.rnn.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        rnn = self.rnn
        states = rnn.get_initial_state(inputs)
        # UNPACK, not STRIDED_SLICE: TFLM slices at most 4-D tensors.
        steps = tf.unstack(inputs, axis=1)
        outputs = []
        for x in reversed(steps) if rnn.go_backwards else steps:
            out, states = rnn.cell.call(x, states)
            outputs.append(out)
        return tf.stack(outputs, axis=1) if rnn.return_sequences else out


class KeptNormalization(_L.Layer):
    """A `LayerNormalization` whose output passes through an operator the
    converter cannot fold (a MAXIMUM with the lowest float32), so that the
    `full_int8` converter does not fold its gamma into the weights of the
    layer that reads it: those weights would become `codes x channel scale
    x gamma` per input, on no per-channel lattice. Holds the layer, so its
    weights are the layer's."""

    def __init__(self, norm, **kwargs):
        super().__init__(name=norm.name, **kwargs)
        self.norm = norm

    def call(self, inputs):
        return tf.maximum(self.norm(inputs), np.finfo(np.float32).min)


def _reads_gates_apart(layer) -> bool:
    """True for a `GRU(reset_after=False)`: its conversion copy multiplies
    with each gate's third of both kernels (`implementation=1`).

    With `implementation=2` such a cell multiplies the state with the update
    and reset gates' columns of the recurrent kernel and splits the product
    into `[units, units, rest]` columns, the rest empty: the converter writes
    a `SPLIT_V` with an empty output, which TFLM cannot allocate ("dynamic
    tensor"). `implementation=1` computes the same without it."""
    return isinstance(layer, _L.GRU) and not layer.reset_after


def _recurrent_config(layer, config: dict) -> dict:
    """The config of a recurrent layer's conversion copy: unrolled, without
    dropout (inference does not apply it; a recurrent dropout would switch
    the cell to `implementation=1`), an LSTM or GRU with the implementation
    whose weight cuts `gate_cuts` describes."""
    config = {**config, "unroll": True}
    if isinstance(layer, (_L.LSTM, _L.GRU)):
        config.update(
            dropout=0.0,
            recurrent_dropout=0.0,
            implementation=1 if _reads_gates_apart(layer) else 2,
        )
    return config


def _unrolled(layer):
    """`clone_model`'s clone function: recurrent layers unrolled, others as they are."""
    config = layer.get_config()
    if isinstance(layer, RECURRENT):
        _check_recurrent(layer, layer.input_shape)
        return type(layer).from_config(_recurrent_config(layer, config))
    if isinstance(layer, _L.Bidirectional):
        for inner in _inner(layer):
            if not isinstance(inner, RECURRENT):
                raise _refuse(
                    layer,
                    f"it runs a {type(inner).__name__}, which TFLite's converter lowers to a "
                    "WHILE loop whose weights stay float32.",
                    "Use Bidirectional with LSTM, GRU or SimpleRNN.",
                )
            _check_recurrent(inner, layer.input_shape)
        config["layer"]["config"] = _recurrent_config(
            layer.forward_layer, config["layer"]["config"]
        )
        if "backward_layer" in config:
            config["backward_layer"]["config"] = _recurrent_config(
                layer.backward_layer, config["backward_layer"]["config"]
            )
        return type(layer).from_config(config)
    if isinstance(layer, CONV_RECURRENT):
        _check_recurrent(layer, layer.input_shape)
        if layer.return_state:
            raise _refuse(
                layer,
                "return_state=True is not supported for convolutional recurrent layers.",
                "Use return_sequences=True and take the last step instead.",
            )
        return UnrolledConvRNN(type(layer).from_config(config))
    if isinstance(layer, _L.TimeDistributed) and isinstance(layer.layer, _SEQUENCE):
        raise _refuse(
            layer,
            f"it runs a {type(layer.layer).__name__} per time step.",
            "Apply the layer to the sequence directly.",
        )
    if isinstance(layer, _L.LayerNormalization):
        return KeptNormalization(type(layer).from_config(config))
    if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer, clone_function=_unrolled)
    return type(layer).from_config(config)


def batch_of_one(model):
    """`clone_model`'s `input_tensors` for a copy of `model` with a batch of one."""
    # The inputs keep the model's names: a fresh `keras.Input` would be named
    # `input_<n>` with a process-wide counter, and the file's bytes would
    # depend on how many models were exported before it.
    inputs = [
        keras.Input(batch_size=1, shape=t.shape[1:], dtype=t.dtype, name=name)
        for t, name in zip(model.inputs, model.input_names)
    ]
    return inputs if len(inputs) > 1 else inputs[0]


def conversion_model(model):
    """The model the converters get: for a model with recurrent or attention
    layers, a copy with one sample per batch and every recurrent layer
    unrolled; any other model as it is.

    Raises:
        ExportError: For a recurrent layer without a fixed number of time
            steps, a stateful one, or another form the converter cannot lower;
            the message names the layer, the operator and what to do.
    """
    if not needs_preparation(model):
        return model
    copy = keras.models.clone_model(
        model, input_tensors=batch_of_one(model), clone_function=_unrolled
    )
    weights = model.get_weights()
    if [w.shape for w in weights] != [tuple(w.shape) for w in copy.weights]:
        raise ExportError(
            f"Model {model.name!r}: its unrolled copy for conversion holds other weights than "
            "the model; the recurrent layers cannot be unrolled."
        )
    copy.set_weights(weights)
    return copy


# Where the weights of these layers land in the file.


def _matrix(a: np.ndarray, contracted: int) -> np.ndarray:
    """A kernel whose first `contracted` axes meet the input, as the
    `FULLY_CONNECTED` weight `(outputs, inputs)` the converter writes."""
    return a.reshape(int(np.prod(a.shape[:contracted])), -1).T


def contracted_axes(equation: str) -> int:
    """How many leading kernel axes an `EinsumDense` equation sums over.

    >>> contracted_axes("abc,cde->abde"), contracted_axes("abcd,cde->abe")
    (1, 2)
    """
    inputs, output = equation.split("->")
    kernel = inputs.split(",")[1]
    n = 0
    while n < len(kernel) and kernel[n] not in output:
        n += 1
    return max(1, n)


def layout_class(layer) -> str:
    """The name under which `tflite_layout` knows a layer's weights: the
    wrapped layer's class for `TimeDistributed`, the equation's contracted
    axes for `EinsumDense` (`"EinsumDense:2"`), else the layer's class."""
    if isinstance(layer, _L.TimeDistributed):
        return layout_class(layer.layer)
    if isinstance(layer, _L.EinsumDense):
        return f"EinsumDense:{contracted_axes(layer.equation)}"
    return weights_class(layer).__name__


#: Classes whose kernels are matrices read by `FULLY_CONNECTED` once unrolled.
_MATRIX_CLASSES = ("LSTM", "GRU", "SimpleRNN", "Bidirectional")
_CONV_RECURRENT_NAMES = {"ConvLSTM1D": "Conv1D", "ConvLSTM2D": "Conv2D", "ConvLSTM3D": "Conv3D"}


def handles(cls: str) -> bool:
    """True for the layout classes of this module."""
    return (
        cls in _MATRIX_CLASSES
        or cls == "MultiHeadAttention"
        or cls.startswith("EinsumDense")
        or cls in _CONV_RECURRENT_NAMES
    )


def conv_class(cls: str) -> str | None:
    """The convolution class whose layout a convolutional recurrent layer's
    gate kernels have (`"ConvLSTM2D"` -> `"Conv2D"`), else None."""
    return _CONV_RECURRENT_NAMES.get(cls)


def tflite_layout(cls: str, weight: str, a: np.ndarray) -> tuple[np.ndarray, int]:
    """A recurrent, attention or `EinsumDense` weight as the converter writes
    it once unrolled: a `FULLY_CONNECTED` weight `(outputs, inputs)`, output
    channels first."""
    if cls == "MultiHeadAttention":
        # query/key/value: (dim, heads, head_dim); attention_output: (heads, head_dim, out).
        return _matrix(a, 2 if weight.startswith("attention_output") else 1), 0
    if cls.startswith("EinsumDense"):
        return _matrix(a, int(cls.split(":")[1]) if ":" in cls else 1), 0
    return a.T, 0


def _cell_layer(layer, weight: str):
    """The recurrent layer whose cell reads `weight` of `layer` (the forward
    or backward one of a `Bidirectional`), else `layer`."""
    if isinstance(layer, _L.Bidirectional):
        return layer.backward_layer if "backward" in weight.split("/") else layer.forward_layer
    return layer


def gate_cuts(layer, weight: str) -> tuple[tuple[str, int], ...]:
    """How the cell of `layer`'s conversion copy cuts `weight` before
    multiplying with it: `(piece name, columns)` along the last axis, or `()`
    when it reads the weight whole.

    The converter folds each cut of a constant into a tensor of its own, so
    the file holds the pieces, not the weight: a convolutional LSTM convolves
    with each gate's quarter of both kernels (i, f, c, o), a
    `GRU(reset_after=False)` multiplies with each gate's third (z, r, h) of
    both kernels (`_reads_gates_apart`). LSTM and other GRUs read their
    kernels whole (`implementation=2`).
    """
    inner = _cell_layer(layer, weight)
    if weight.rsplit("/", 1)[-1] not in ("kernel", "recurrent_kernel"):
        return ()
    if isinstance(inner, CONV_RECURRENT):
        return tuple((g, inner.filters) for g in GATES)
    if _reads_gates_apart(inner):
        return tuple((g, inner.units) for g in ("z", "r", "h"))
    return ()


def gate_pieces(layer, weight: str, a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """`layer`'s `weight` (Keras layout, or any array of its shape) cut as
    its cell reads it (`gate_cuts`): one `(piece name, columns)` per piece;
    a weight read whole as `[("", a)]`."""
    cuts = gate_cuts(layer, weight)
    if not cuts:
        return [("", a)]
    if sum(n for _, n in cuts) != a.shape[-1]:
        raise ExportError(
            f"Layer {layer.name!r} ({type(layer).__name__}): weight {weight!r} has "
            f"{a.shape[-1]} columns, its cell reads {sum(n for _, n in cuts)}."
        )
    ends = np.cumsum([n for _, n in cuts])[:-1]
    return list(zip((g for g, _ in cuts), np.split(a, ends, axis=-1)))


def check_gather_tables(model, trained: set[str]) -> None:
    """Refuses `full_int8` for an `Embedding` whose table was trained to a
    codebook or to 8 bits (`trained`: the names of such layers).

    The converter stores the table of a `GATHER` as int8 with one step for
    the whole table, taken from the calibrated range of the looked-up values
    (the operator's output shares its step): rows with their own scales, or
    rows beyond what the samples looked up, cannot be stored exactly, and a
    table rewritten per row would be read with the output's single step.

    Raises:
        ExportError: Naming the layer, the operator and what to do.
    """
    for layer in _all_layers(model):
        if isinstance(layer, _L.Embedding) and layer.name in trained:
            raise _refuse(
                layer,
                "format='full_int8' stores its table for the GATHER operator as int8 with one "
                "step for the whole table, the calibrated range of the looked-up values; a "
                "table trained with a scale per row is not exact there.",
                "Export format='int8' or 'int4' (float activations; the table stays float32), "
                "or keep the Embedding out of the codebook mapping (None) so that full_int8 "
                "rounds it as any float weight.",
            )
