"""Paths: a model file checked before anything heavy loads; files written
whole or not at all."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

from tflite_export.errors import ExportError

#: Suffixes of the Keras model files `load_model` reads (or a SavedModel directory).
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def check_model_path(path) -> pathlib.Path:
    """A saved model's path, checked without loading TensorFlow.

    Returns:
        The path.

    Raises:
        ExportError: A missing file, a directory without `saved_model.pb`, or
            an unknown file type.

    Example:

    >>> check_model_path("missing.keras")
    Traceback (most recent call last):
    ...
    tflite_export.errors.ExportError: Model file not found. Received: model='missing.keras'
    """
    p = pathlib.Path(os.fspath(path))
    if not p.exists():
        raise ExportError(f"Model file not found. Received: model={str(p)!r}")
    is_savedmodel = p.is_dir() and (p / "saved_model.pb").exists()
    if p.is_dir() and not is_savedmodel:
        raise ExportError(
            f"{str(p)!r} is a directory without saved_model.pb; expected a .keras or .h5 file "
            "or a SavedModel directory."
        )
    if not is_savedmodel and p.suffix not in MODEL_SUFFIXES:
        raise ExportError(
            f"Unknown model file type {p.suffix!r}; accepted: .keras, .h5, or a SavedModel "
            f"directory. Received: model={str(p)!r}"
        )
    return p


def check_output_path(path, what: str = "path") -> pathlib.Path:
    """A file to write: not a directory, and inside a folder that is not a file.

    Raises:
        ExportError: Naming the argument and what it received.
    """
    p = pathlib.Path(os.fspath(path))
    if p.is_dir():
        raise ExportError(f"`{what}` is a directory. Received: {what}={str(p)!r}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(
                    f"`{what}` is inside {str(parent)!r}, which is a file. "
                    f"Received: {what}={str(p)!r}"
                )
            if not os.access(parent, os.W_OK):
                raise ExportError(
                    f"Cannot write {str(p)!r}: the folder {str(parent)!r} is not writable. "
                    f"Received: {what}={str(p)!r}"
                )
            break
    return p


def atomic_write(path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder, so
    that `path` holds either its old content or all of `data`, never a part.

    Args:
        path: The file to write; missing parent folders are made.
        data: The bytes.
    """
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
