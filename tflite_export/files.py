"""Paths: a model file checked before anything heavy loads; files written
whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import zipfile
import zlib

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
    if not is_savedmodel:
        problem = _model_file_problem(p)
        if problem:
            raise ExportError(
                f"{str(p)!r} is not a readable Keras model file: {problem}. Save the model "
                "again (`model.save('model.keras')`) and pass that file. "
                f"Received: model={str(p)!r}"
            )
    return p


#: The first bytes of an HDF5 file (`.h5`, and `.keras` files of old Keras versions).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: pathlib.Path) -> bool:
    # HDF5 allows a user block before its signature, at 0, 512, 1024, 2048, ... bytes.
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _model_file_problem(path: pathlib.Path) -> str | None:
    """Why the file at `path` cannot be a Keras model file, or None; read with
    the standard library only (a zip's directory, an HDF5 signature)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        if _is_hdf5(path):
            return None
        if not zipfile.is_zipfile(path):
            return "it is neither a Keras zip archive nor an HDF5 file (truncated or corrupt?)"
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                return "the zip archive holds no config.json (not saved by Keras?)"
            broken = z.testzip()
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    except (zipfile.BadZipFile, zlib.error) as e:
        return f"the zip archive is damaged ({e})"
    if broken is not None:
        return f"{broken!r} inside the zip archive is damaged (CRC mismatch)"
    return None


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


def _umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # mkstemp makes the file 0600; a file the user asked for gets the process's umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(data: dict, path, what: str) -> str:
    """`data` as indented JSON text; also written to `path` (atomically) when given.

    Raises:
        ExportError: When `path` cannot be written (naming `what`).
    """
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if path is not None:
        target = check_output_path(path, "path")
        try:
            atomic_write(target, text.encode())
        except OSError as e:
            raise ExportError(
                f"Cannot write the JSON {what} to {str(target)!r}: {e.strerror or e}. "
                "Choose a writable path."
            ) from e
    return text
