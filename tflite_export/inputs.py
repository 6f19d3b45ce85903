"""Sample inputs for conversion and checks: the user's, validated, or random ones."""

from __future__ import annotations

import numpy as np

from tflite_export import runners
from tflite_export.errors import ExportError

#: At most this many samples are drawn from a generator of representative data.
MAX_SAMPLES = 1000


def input_specs(model) -> list[tuple[tuple, object]]:
    """`(shape, dtype)` of each input of a Keras model."""
    return [(tuple(t.shape), t.dtype) for t in model.inputs]


def _generator_arrays(data, specs, what) -> list[np.ndarray]:
    """Samples of a generator (each an array or one per input, with or without a
    leading batch dimension of 1), stacked into one array per input."""
    samples = []
    for i, s in enumerate(data):
        if i >= MAX_SAMPLES:
            break
        parts = list(s) if isinstance(s, (list, tuple)) else [s]
        fixed = []
        for part, (shape, _) in zip(parts, specs):
            a = np.asarray(part)
            fixed.append(a[0] if a.ndim == len(shape) and a.shape[0] == 1 else a)
        samples.append(fixed)
    if not samples:
        raise ExportError(f"`{what}` yielded no samples.")
    return [np.stack([s[k] for s in samples]) for k in range(len(samples[0]))]


def _check_array(a, shape, what) -> None:
    want = tuple(shape[1:])
    if a.dtype.kind not in "biuf":
        raise ExportError(
            f"`{what}` must be numeric; received dtype {a.dtype}. Accepted: float or int "
            f"arrays of shape (N, {', '.join(str(d) for d in want)})."
        )
    if a.ndim != len(shape) or tuple(a.shape[1:]) != want or a.shape[0] == 0:
        raise ExportError(
            f"`{what}` has shape {tuple(a.shape)}; the model takes inputs of shape "
            f"(N, {', '.join(str(d) for d in want)}) with N >= 1."
        )
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ExportError(f"`{what}` holds NaN or inf values.")


def representative(model, data, what="representative_data") -> list[np.ndarray] | None:
    """Validates and materializes sample inputs as one array per model input.

    Args:
        model: The Keras model the samples are for.
        data: `None`, an array `(N, ...)`, a list of arrays (one per input), or
            a generator of samples.
        what: The argument's name, for error messages.

    Returns:
        One array per model input, in its dtype; `None` for `data=None`.

    Raises:
        ExportError: For samples of the wrong count, shape or dtype, or with NaN.
    """
    specs = input_specs(model)
    if data is None:
        return None
    if isinstance(data, dict):  # a model of named inputs (a dict of arrays)
        names = list(getattr(model, "input_names", None) or [])
        if sorted(data) != sorted(names):
            raise ExportError(
                f"`{what}` is a dict with keys {sorted(data)}; the model's inputs are named "
                f"{sorted(names)}."
            )
        data = [data[n] for n in names]
    if not isinstance(data, (np.ndarray, list, tuple)) and hasattr(data, "__iter__"):
        arrays = _generator_arrays(data, specs, what)
    elif isinstance(data, (list, tuple)) and len(specs) > 1:
        arrays = [np.asarray(a) for a in data]
    else:
        arrays = [np.asarray(data)]
    if len(arrays) != len(specs):
        raise ExportError(f"`{what}` has {len(arrays)} input arrays; the model takes {len(specs)}.")
    for a, (shape, _) in zip(arrays, specs):
        _check_array(a, shape, what)
    return [
        a.astype(np.dtype(dtype.name if hasattr(dtype, "name") else dtype))
        for a, (_, dtype) in zip(arrays, specs)
    ]


def random_inputs(model, n=32, seed=0) -> list[np.ndarray]:
    """Random inputs for a Keras model: normal floats; for integer inputs, ids
    below the smallest `input_dim` of its layers (an Embedding's vocabulary),
    valid whichever of several inputs feeds which table."""
    rng = np.random.default_rng(seed)
    vocabularies = [
        int(layer.input_dim)
        for layer in model.layers
        if isinstance(getattr(layer, "input_dim", None), int) and layer.input_dim > 0
    ]
    high = min(vocabularies, default=2)
    out = []
    for layer_shape, dtype in input_specs(model):
        shape = (n, *layer_shape[1:])
        if dtype.is_integer:
            out.append(rng.integers(0, high, size=shape).astype(dtype.as_numpy_dtype))
        else:
            out.append(rng.normal(size=shape).astype(np.float32))
    return out


def random_file_inputs(model_bytes: bytes, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Random inputs of the shapes a `.tflite` file takes (integer inputs: 0 or 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in runners.interpreter(model_bytes).get_input_details():
        shape = (n, *[int(s) for s in d["shape"][1:]])
        if d["dtype"] in (np.int32, np.int64):
            out.append(rng.integers(0, 2, size=shape).astype(d["dtype"]))
        else:
            out.append(rng.normal(size=shape).astype(np.float32))
    return out
