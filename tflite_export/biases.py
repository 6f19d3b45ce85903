"""Moving a model's biases onto the int32 grid its full-integer file stores them on.

A full-integer file adds each Dense or convolution bias (with a
BatchNormalization after the layer folded in), and the biases of an
unrolled LSTM's or GRU's input (and a GRU's recurrent) products, as an
int32 in steps of input step x weight step, so it computes with the bias rounded to that grid: up to
half a step, a few thousandths of an output step, from the float bias Keras
adds. Where a value lies that close to a rounding boundary, the
file's 8-bit code is one off, and a layer or two later a top-1 class can
differ. A model trained with `activations="int8"` has the file's scales
already; moving its biases onto the file's grid (`plan`, then `apply`: what
`export(..., align_biases=True)` does) makes the two compute the same
integers, up to float rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tflite_export import exact
from tflite_export.schema import BIAS_INPUT, TensorType
from tfmot_discrete.core import rules
from tfmot_discrete.tfk import compat, rescale

#: The largest move `export(..., align_biases=True)` makes, in grid steps: half
#: a step of the converter's rounding (the export re-rounds a bias from the
#: float one where it moves a weight's step, `exact._requantize_bias`), and
#: float rounding. A larger distance means the file computes something else
#: there: that bias is left alone, and the report's note names it.
MAX_MOVE_STEPS = 0.51

#: Layer classes whose file operator adds the bias after the matrix product.
_ALIGNED_CLASSES = frozenset(
    {"Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D"}
)

#: `(layer class, weight)` of the recurrent kernels whose file operator adds a
#: bias -> the row of the layer's bias it adds (None: the whole bias).
_RECURRENT_BIAS_ROW = {
    ("LSTM", "kernel"): None,
    ("GRU", "kernel"): 0,
    ("GRU", "recurrent_kernel"): 1,
}


@dataclasses.dataclass
class Move:
    """One bias moved onto the file's grid: the layer and weight changed
    (a BatchNormalization's `beta` when one follows the layer; `cell.bias`
    for a recurrent layer), and the largest move in steps of the grid."""

    layer: str
    weight: str
    largest_move_in_steps: float
    values: np.ndarray  # the new values, float32


def _stored_bias(fb, m) -> tuple[np.ndarray, np.ndarray] | None:
    """`(bias, grid step)` per output channel (float64) of the int32 bias of
    the operator match `m` was found at, or None where it adds none."""
    sg = fb.subgraphs[0]
    op = sg.operators[m.op_index]
    k = BIAS_INPUT.get(fb.operatorCodes[op.opcodeIndex].builtinCode)
    if k is None or k >= len(op.inputs) or int(op.inputs[k]) < 0:
        return None
    t = sg.tensors[int(op.inputs[k])]
    if t.type != TensorType.INT32 or t.quantization is None or t.quantization.scale is None:
        return None
    raw = exact.stored_values(fb, t)
    if raw is None:
        return None
    raw = raw.astype(np.float64).reshape(-1)
    step = np.broadcast_to(np.asarray(t.quantization.scale, np.float64).reshape(-1), raw.shape)
    return raw * step, step


def file_biases(data: bytes, matches) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{layer name: (bias, grid step)}` per output channel as the file stores
    them (float64), for each Dense or convolution the file's codebook weights
    were matched to."""
    return _file_biases(exact.read(data), matches)


def _file_biases(fb, matches) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for m in matches:
        if m.folded_into is None and m.cw.layer_class in _ALIGNED_CLASSES:
            found = _stored_bias(fb, m)
            if found is not None:
                out[m.cw.layer] = found
    return out


def recurrent_file_biases(data: bytes, matches) -> dict[str, dict]:
    """`{layer name: {bias row: (bias, grid step)}}` as the file stores them,
    for each LSTM or GRU whose kernels the file's codebook weights were
    matched to (row `None`: the whole bias, as an LSTM's; `0` and `1`: a
    GRU's input and recurrent bias rows). Unrolled, every step has an
    operator of its own with the same weight and bias: the matched one is
    read."""
    return _recurrent_file_biases(exact.read(data), matches)


def _recurrent_file_biases(fb, matches) -> dict[str, dict]:
    out = {}
    for m in matches:
        row = _RECURRENT_BIAS_ROW.get((m.cw.layer_class, m.cw.weight), False)
        if row is not False:
            found = _stored_bias(fb, m)
            if found is not None:
                out.setdefault(m.cw.layer, {})[row] = found
    return out


def _inner_layers(model) -> dict:
    """`{name: layer}` of `model`'s layers, a wrapper's inner layer under its own name."""
    found = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        found[layer.name] = layer
        if inner is not None and hasattr(inner, "name"):
            found[inner.name] = inner
    return found


def batchnorm_after(model) -> dict:
    """`{layer name: the BatchNormalization the converter folds into it}` of a
    tf_keras model (a wrapper's inner layer named), in the model's own graph."""
    own = compat.model_nodes(model)
    out = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        bn = rescale.normalization_after(layer, own)
        if bn is not None and rules.fused_into_next(inner, [bn]):
            out[inner.name] = bn
    return out


def _numpy(v) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float64)


def _folded_bias(layer, bn) -> tuple[np.ndarray | None, np.ndarray | None]:
    """`(bias, float bias the file adds)` of `layer` with the BatchNormalization
    `bn` (or None) folded in; `(None, None)` without a bias to add."""
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    b = _numpy(bias).reshape(-1) if bias is not None else None
    if bn is None:
        return b, b
    units = int(np.prod(bn.moving_mean.shape))
    b = b if b is not None else np.zeros(units)
    inv = _numpy(bn.gamma).reshape(-1) if bn.scale else np.ones(units)
    inv = inv / np.sqrt(_numpy(bn.moving_variance).reshape(-1) + bn.epsilon)
    beta = _numpy(bn.beta).reshape(-1) if bn.center else np.zeros(units)
    return b, beta + (b - _numpy(bn.moving_mean).reshape(-1)) * inv


def float_biases(model) -> dict[str, np.ndarray]:
    """`{layer name: the float bias its file operator adds}` (float64, a
    BatchNormalization after the layer folded in) for each Dense or
    convolution of a tf_keras model (a wrapper's inner layer named)."""
    folded = batchnorm_after(model)
    out = {}
    for name, layer in _inner_layers(model).items():
        if type(layer).__name__ not in _ALIGNED_CLASSES:
            continue
        _, now = _folded_bias(layer, folded.get(name))
        if now is not None:
            out[name] = now
    return out


def plan(model, data: bytes, matches) -> list[Move]:
    """The moves that put `model`'s biases on the file's grid (nothing changed yet).

    Args:
        model: The Keras model the file was converted from (its tf_keras QAT
            graph).
        data: The full-integer file.
        matches: Where its codebook weights are (`Conversion.matches`).
    """
    layers = _inner_layers(model)
    folded = batchnorm_after(model)
    fb = exact.read(data)
    moves = []
    for name, (stored, step) in _file_biases(fb, matches).items():
        layer = layers.get(name)
        if layer is None:
            continue
        bn = folded.get(name)
        b, now = _folded_bias(layer, bn)
        if bn is None:
            if b is None:
                continue  # no bias to move: the file stores zeros
            moves.append(_move(name, "bias", b, stored - b, step))
        elif getattr(bn, "center", True):  # else no beta to carry the move
            beta = _numpy(bn.beta).reshape(-1)
            moves.append(_move(bn.name, "beta", beta, stored - now, step))
    for name, rows in _recurrent_file_biases(fb, matches).items():
        layer = layers.get(name)
        if layer is not None and getattr(layer, "use_bias", False):
            moves.append(_recurrent_move(name, _numpy(layer.cell.bias), rows))
    return moves


def _recurrent_move(name, bias, rows) -> Move:
    """One move of a recurrent layer's whole bias: each row the file adds
    (`recurrent_file_biases`) onto its grid, the others as they are."""
    delta, step = np.zeros_like(bias), np.ones_like(bias)
    for row, (stored, row_step) in rows.items():
        at = slice(None) if row is None else row
        delta[at] = stored.reshape(bias[at].shape) - bias[at]
        step[at] = row_step.reshape(bias[at].shape)
    return _move(name, "cell.bias", bias, delta, step)


def _move(layer, weight, current, delta, step) -> Move:
    return Move(
        layer=layer,
        weight=weight,
        largest_move_in_steps=float(np.max(np.abs(delta) / step, initial=0.0)),
        values=(current + delta).astype(np.float32),
    )


def _attribute(layer, path: str):
    """The variable at `path` of `layer` (`"bias"`, `"cell.bias"`)."""
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer


def apply(moves: list[Move], *models):
    """Assigns each move to the layer of that name in every model given (a
    Keras 3 model and its tf_keras twin share their layers' names).

    Returns:
        A function that puts every moved value back.

    Raises:
        KeyError: A model has no layer of a move's name (nothing is changed).
    """
    targets = []
    for model in models:
        layers = _inner_layers(model)
        missing = sorted({mv.layer for mv in moves} - set(layers))
        if missing:
            raise KeyError(f"{model.name!r} has no layer named {missing}")
        targets += [(_attribute(layers[mv.layer], mv.weight), mv.values) for mv in moves]
    before = [(var, var.numpy()) for var, _ in targets]
    for var, values in targets:
        var.assign(values.reshape(tuple(var.shape)))

    def restore():
        for var, values in before:
            var.assign(values)

    return restore
