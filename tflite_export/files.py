"""Writing files: whole or not at all."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


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
