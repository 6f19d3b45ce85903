"""`recalibrate_batchnorm`: BatchNormalization statistics for the weights as they are now.

A BatchNormalization layer's moving mean and variance average what its input
looked like during training, while the weights before it kept changing (and,
with a codebook, jumping between values). Re-estimating them once with the
final, projected weights removes that gap.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmot_discrete._keras import keras
from tfmot_discrete.distill import Distiller

#: Batch size used when `data` holds arrays or an unbatched dataset.
DEFAULT_BATCH_SIZE = 32


def batchnorm_layers(model) -> list:
    """Every `BatchNormalization` layer of `model`, also inside TF-MOT
    wrappers and nested models, in tracking order."""
    return [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]


def _check_positive_int(name, value, allow_none):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        accepted = "None or an int >= 1" if allow_none else "an int >= 1"
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
    return int(value)


def input_batches(model, data, batch_size=DEFAULT_BATCH_SIZE, steps=None, argname="data"):
    """Batches of model inputs from `data`, validated against `model`'s inputs.

    Args:
        model: The model whose inputs the batches feed.
        data: An array of inputs (a list of arrays for a model with several
            inputs), a tuple `(x,)`, `(x, y)` or `(x, y, sample_weight)` of
            such, or a `tf.data.Dataset` whose elements are inputs or such
            tuples, batched or not (unbatched elements are batched here).
        batch_size: Batch size for arrays and unbatched datasets.
        steps: At most this many batches; `None` for one pass over `data`.
        argname: The argument name used in error messages.

    Returns:
        A list of batches, each an array or a list of arrays (one per input).

    Raises:
        ValueError: For data of the wrong type or shape, an empty or infinite
            dataset without `steps`, or a bad `batch_size` / `steps`.
    """
    batch_size = _check_positive_int("batch_size", batch_size, allow_none=False)
    steps = _check_positive_int("steps", steps, allow_none=True)
    ranks = [len(t.shape) for t in model.inputs]
    if isinstance(data, tf.data.Dataset):
        card = int(data.cardinality())
        if card == tf.data.INFINITE_CARDINALITY and steps is None:
            raise ValueError(
                f"`{argname}` is an infinite dataset: pass `steps`. Received: steps=None"
            )
        spec = data.element_spec
        x_spec = spec[0] if isinstance(spec, tuple) else spec
        first = tf.nest.flatten(x_spec)[0]
        if first.shape.rank == ranks[0] - 1:
            data = data.batch(batch_size)
        if isinstance(spec, tuple):
            data = data.map(lambda *e: e[0])
        if steps is not None:
            data = data.take(steps)
        batches = [_as_inputs(b, len(ranks)) for b in data]
    else:
        x = data
        if isinstance(data, tuple):
            if not 1 <= len(data) <= 3:
                raise ValueError(
                    f"A tuple `{argname}` must be (x,), (x, y) or (x, y, sample_weight). "
                    f"Received: a tuple of {len(data)} items"
                )
            x = data[0]
        arrays = _as_inputs(x, len(ranks), argname)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(
                f"The input arrays of `{argname}` differ in length. "
                f"Received: lengths {[len(a) for a in arrays]}"
            )
        starts = range(0, n, batch_size)
        if steps is not None:
            starts = starts[:steps]
        batches = [[a[i : i + batch_size] for a in arrays] for i in starts]
    if not batches:
        raise ValueError(f"`{argname}` holds no samples. Received: {argname} of 0 samples")
    for b in batches:
        for a, t in zip(b, model.inputs):
            want = tuple(t.shape[1:])
            got = tuple(a.shape)
            if len(got) != len(t.shape) or any(
                w is not None and g != w for g, w in zip(got[1:], want)
            ):
                raise ValueError(
                    f"`{argname}` does not fit the model's input {t.name!r}, which takes "
                    f"batches of shape (batch, {', '.join(str(d) for d in want)}). "
                    f"Received: a batch of shape {got}"
                )
    return [b[0] if len(b) == 1 else b for b in batches]


def _as_inputs(x, n_inputs, argname="data"):
    parts = list(x) if isinstance(x, (list, tuple)) and n_inputs > 1 else [x]
    if len(parts) != n_inputs:
        raise ValueError(
            f"The model takes {n_inputs} inputs; `{argname}` holds {len(parts)} input arrays."
        )
    out = []
    for p in parts:
        if isinstance(p, tf.Tensor):
            p = p.numpy()
        a = np.asarray(p) if not isinstance(p, np.ndarray) else p
        if a.dtype.kind not in "biuf":
            raise ValueError(
                f"`{argname}` must hold numeric arrays, a tuple (x, y) of them or a "
                f"tf.data.Dataset. Received: {argname} of type {type(p).__name__}"
                + (f" (dtype {a.dtype})" if a.dtype.kind != "O" else "")
            )
        if a.ndim == 0:
            raise ValueError(
                f"`{argname}` must hold arrays with a batch dimension. Received: a scalar"
            )
        out.append(a)
    return out


class _Accumulator:
    """Stands in for a BatchNormalization's `call`: normalizes with the batch's
    own statistics (as in training) and sums them, weighted by sample count."""

    def __init__(self, layer):
        for attr, off in (("renorm", False), ("virtual_batch_size", None), ("adjustment", None)):
            if getattr(layer, attr, off) not in (off,):
                raise ValueError(
                    f"BatchNormalization layer {layer.name!r} sets `{attr}`, which "
                    f"recalibrate_batchnorm does not support. Received: {attr}="
                    f"{getattr(layer, attr)!r}"
                )
        self.layer = layer
        shape = tuple(layer.moving_mean.shape)
        self.total = tf.Variable(tf.zeros(shape, tf.float64), trainable=False)
        self.total_sq = tf.Variable(tf.zeros(shape, tf.float64), trainable=False)
        self.count = tf.Variable(tf.zeros((), tf.float64), trainable=False)

    def __call__(self, inputs, training=None, **kwargs):  # noqa: ARG002
        layer = self.layer
        x = tf.cast(inputs, tf.float32)
        axes = [a % x.shape.rank for a in layer.axis]
        reduce = [i for i in range(x.shape.rank) if i not in axes]
        mean, var = tf.nn.moments(x, reduce, keepdims=True)
        bshape = mean.shape

        def param(v):
            return None if v is None else tf.reshape(tf.cast(v, tf.float32), bshape)

        y = tf.nn.batch_normalization(
            x, mean, var, param(layer.beta), param(layer.gamma), layer.epsilon
        )
        n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduce)), tf.float64)
        pshape = self.total.shape
        m64 = tf.reshape(tf.cast(mean, tf.float64), pshape)
        sq64 = tf.reshape(tf.cast(var, tf.float64), pshape) + tf.square(m64)
        updates = [
            self.total.assign_add(n * m64),
            self.total_sq.assign_add(n * sq64),
            self.count.assign_add(n),
        ]
        with tf.control_dependencies(updates):
            return tf.cast(tf.identity(y), inputs.dtype)

    def assign(self):
        count = float(self.count.numpy())
        if count == 0:
            return
        mean = self.total.numpy() / count
        var = np.maximum(self.total_sq.numpy() / count - np.square(mean), 0.0)
        dtype = self.layer.moving_mean.dtype.as_numpy_dtype
        self.layer.moving_mean.assign(mean.astype(dtype))
        self.layer.moving_variance.assign(var.astype(dtype))


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE) -> int:
    """Re-estimates every BatchNormalization's moving mean and variance.

    Runs the model over `data` with its weights as they are now (a QAT
    model's weights projected to their codebooks), each BatchNormalization
    normalizing with its batch's statistics as in training, and sets the
    moving mean and variance to the mean and variance of its input over all
    the samples seen: the moving mean is the cumulative average of the batch
    means (momentum `i/(i+1)`, weighted by batch size), the moving variance
    the cumulative average of the batch second moments minus the squared
    mean (so that it also counts the spread between batch means). With one
    batch holding all the data, inference then computes exactly what
    training mode computes on it. Every other layer runs in
    inference mode (no dropout, activation ranges not updated). No variable
    other than the moving statistics changes: trainable weights, optimizer
    state and activation ranges stay as they were.

    Call it after training a QAT model (or on its stripped copy), before
    evaluating, saving or exporting; `RecalibrateBatchNorm` does it at the
    end of `fit`.

    Args:
        model: A tf_keras model: from `quantize_model`, stripped, or plain;
            for a `Distiller`, its student.
        data: Inputs: an array (a list of arrays for several inputs), a
            tuple `(x, y)` (`y` is ignored) or a `tf.data.Dataset` of inputs
            or of `(x, y)` tuples, batched or not. A few thousand training
            samples are enough.
        steps: Use at most this many batches. Defaults to `None`: one pass
            over `data` (an infinite dataset needs `steps`).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Returns:
        The number of batches used.

    Raises:
        ValueError: For a model that is not a tf_keras model, data that does
            not fit it, or a bad `steps` or `batch_size`.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> L = td.keras.layers
    >>> model = td.keras.Sequential([td.keras.Input((4,)), L.Dense(3), L.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> td.recalibrate_batchnorm(model, x, batch_size=16)
    4
    >>> bn = model.layers[1]
    >>> bool(np.allclose(bn.moving_mean.numpy(), model.layers[0](x).numpy().mean(0), atol=1e-5))
    True

    References:
        Ioffe and Szegedy, Batch Normalization (2015), section 3.1 (inference
        statistics over the training set after training).
    """
    if isinstance(model, Distiller):
        model = model.student
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a tf_keras model. Received: model of type "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    batches = input_batches(model, data, batch_size=batch_size, steps=steps)
    layers = batchnorm_layers(model)
    if not layers:
        return len(batches)
    accumulators = [_Accumulator(layer) for layer in layers]
    for layer, acc in zip(layers, accumulators):
        layer.call = acc
    try:
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        for b in batches:
            forward(b)
    finally:
        for layer in layers:
            del layer.call
    for acc in accumulators:
        acc.assign()
    return len(batches)


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Calls `recalibrate_batchnorm` on the trained model at the end of `fit`.

    With a `Distiller`, its student is recalibrated (the teacher is left
    alone).

    Args:
        data: Inputs, as for `recalibrate_batchnorm`.
        steps: Use at most this many batches. Defaults to `None` (one pass).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Example:

        model.fit(x, y, epochs=5, callbacks=[td.RecalibrateBatchNorm(x, steps=40)])
    """

    def __init__(self, data, steps=None, batch_size=DEFAULT_BATCH_SIZE):
        super().__init__()
        _check_positive_int("steps", steps, allow_none=True)
        _check_positive_int("batch_size", batch_size, allow_none=False)
        self.data = data
        self.steps = steps
        self.batch_size = batch_size

    def on_train_end(self, logs=None):
        recalibrate_batchnorm(self.model, self.data, steps=self.steps, batch_size=self.batch_size)
