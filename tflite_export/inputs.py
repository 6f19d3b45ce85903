"""Sample inputs for conversion and checks: the user's, validated, or random ones."""

from __future__ import annotations

import numpy as np

from tflite_export import reading, runners
from tflite_export.errors import ExportError
from tflite_export.schema import TensorType

#: At most this many samples are drawn from a generator of representative data.
MAX_SAMPLES = 1000


def _numpy_dtype(dtype) -> np.dtype:
    """A TensorFlow `DType`, a Keras 3 dtype name or a NumPy dtype, as NumPy's."""
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def input_specs(model) -> list[tuple[tuple, np.dtype]]:
    """`(shape, NumPy dtype)` of each input of a Keras model."""
    return [(tuple(t.shape), _numpy_dtype(t.dtype)) for t in model.inputs]


#: The input types of a `.tflite` file, as NumPy's.
_FILE_DTYPES = {
    TensorType.FLOAT32: np.float32,
    TensorType.INT32: np.int32,
    TensorType.INT64: np.int64,
    TensorType.INT8: np.int8,
    TensorType.BOOL: np.bool_,
}


def file_input_specs(model_bytes: bytes) -> list[tuple[tuple, np.dtype]]:
    """`(shape, NumPy dtype)` of each input of a `.tflite` file (packed ones
    too), as the Keras model it was converted from takes them: an int8 input
    with a scale (a `full_int8` file's) is a float input, which the runners
    quantize.

    Raises:
        TfliteFileError: For bytes that are not a readable `.tflite` file.
    """
    sg = reading.read_model(model_bytes).subgraphs[0]
    out = []
    for i in sg.inputs:
        t = sg.tensors[int(i)]
        q = t.quantization
        scaled = q is not None and q.scale is not None and len(q.scale) > 0
        float_input = t.type == TensorType.FLOAT32 or (t.type == TensorType.INT8 and scaled)
        dtype = np.float32 if float_input else _FILE_DTYPES.get(t.type, np.float32)
        out.append((tuple(int(s) for s in t.shape), np.dtype(dtype)))
    return out


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
    fits = a.ndim == len(shape) and all(w is None or w == d for w, d in zip(want, a.shape[1:]))
    if not fits or a.shape[0] == 0:  # (a free dimension, None, takes any length)
        raise ExportError(
            f"`{what}` has shape {tuple(a.shape)}; the model takes inputs of shape "
            f"(N, {', '.join(str(d) for d in want)}) with N >= 1."
        )
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ExportError(f"`{what}` holds NaN or inf values.")


def representative(model, data, what="representative_data", specs=None) -> list[np.ndarray] | None:
    """Validates and materializes sample inputs as one array per model input.

    Args:
        model: The Keras model the samples are for.
        data: `None`, an array `(N, ...)`, a list of arrays (one per input), or
            a generator of samples.
        what: The argument's name, for error messages.
        specs: `(shape, dtype)` of each input, when the model cannot say
            (`file_input_specs`). Defaults to `input_specs(model)`.

    Returns:
        One array per model input, in its dtype; `None` for `data=None`.

    Raises:
        ExportError: For samples of the wrong count, shape or dtype, or with NaN.
    """
    specs = input_specs(model) if specs is None else specs
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
    return [a.astype(dtype) for a, (_, dtype) in zip(arrays, specs)]


def random_inputs(model, n=32, seed=0, specs=None) -> list[np.ndarray]:
    """Random inputs for a Keras model: normal floats; for integer inputs, ids
    below the smallest `input_dim` of its layers (an Embedding's vocabulary),
    valid whichever of several inputs feeds which table. `specs` as for
    `representative`."""
    rng = np.random.default_rng(seed)
    vocabularies = [
        int(layer.input_dim)
        for layer in model.layers
        if isinstance(getattr(layer, "input_dim", None), int) and layer.input_dim > 0
    ]
    high = min(vocabularies, default=2)
    out = []
    for layer_shape, dtype in input_specs(model) if specs is None else specs:
        shape = (n, *layer_shape[1:])
        if np.issubdtype(dtype, np.integer):
            out.append(rng.integers(0, high, size=shape).astype(dtype))
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
