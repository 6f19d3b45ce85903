"""Model inputs from user data: arrays, `(x, y)` tuples or `tf.data` datasets, in batches.

`recalibrate_batchnorm` and `sensitivity` read their data through `input_batches`,
on both paths. No TensorFlow import: a `tf.data.Dataset` or a `tf.Tensor` can
only exist once the user's program imported TensorFlow, so they are recognized
through the TensorFlow already in `sys.modules` (a JAX or PyTorch user never
loads it here).
"""

from __future__ import annotations

import sys

import numpy as np


def _loaded_tensorflow():
    """TensorFlow when this process already imported it, else None."""
    return sys.modules.get("tensorflow")


def is_dataset(data) -> bool:
    """A `tf.data.Dataset`."""
    tf = _loaded_tensorflow()
    return tf is not None and isinstance(data, tf.data.Dataset)


#: Batch size used when `data` holds arrays or an unbatched dataset.
DEFAULT_BATCH_SIZE = 32


def check_positive_int(name, value, allow_none):
    """`value` as an int >= 1 (or None when `allow_none`); raises `ValueError` naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        accepted = "None or an int >= 1" if allow_none else "an int >= 1"
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
    return int(value)


def _input_ranks(model, data) -> list[int]:
    """The rank of each model input (batch axis included): from the model's
    inputs, or for a model without them (a subclassed Keras 3 model) from
    `data`, whose arrays or dataset elements are then taken as batched."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        return [len(t.shape) for t in inputs]
    if is_dataset(data):
        tf = _loaded_tensorflow()
        spec = data.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
        return [s.shape.rank for s in tf.nest.flatten(x)]
    x = data[0] if isinstance(data, tuple) and data else data
    return [np.ndim(a) for a in x] if isinstance(x, list) else [np.ndim(x)]


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
    batch_size = check_positive_int("batch_size", batch_size, allow_none=False)
    steps = check_positive_int("steps", steps, allow_none=True)
    ranks = _input_ranks(model, data)
    if is_dataset(data):
        tf = _loaded_tensorflow()
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
        batches = [as_inputs(b, len(ranks)) for b in data]
    else:
        x = data
        if isinstance(data, tuple):
            if not 1 <= len(data) <= 3:
                raise ValueError(
                    f"A tuple `{argname}` must be (x,), (x, y) or (x, y, sample_weight). "
                    f"Received: a tuple of {len(data)} items"
                )
            x = data[0]
        arrays = as_inputs(x, len(ranks), argname)
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
        for a, t in zip(b, getattr(model, "inputs", None) or ()):
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


def as_inputs(x, n_inputs, argname="data"):
    """The `n_inputs` input arrays held by `x` (one array, or a list of them).

    Raises:
        ValueError: For the wrong number of arrays, non-numeric data or a scalar.
    """
    parts = list(x) if isinstance(x, (list, tuple)) and n_inputs > 1 else [x]
    if len(parts) != n_inputs:
        raise ValueError(
            f"The model takes {n_inputs} inputs; `{argname}` holds {len(parts)} input arrays."
        )
    out = []
    tf = _loaded_tensorflow()
    for p in parts:
        if tf is not None and isinstance(p, tf.Tensor):
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
