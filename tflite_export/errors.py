"""The errors this package raises: one hierarchy under `ExportError`.

Every error that leaves a public function of `tflite_export` is an
`ExportError` (a `ValueError`); callers tell the kinds apart by class:

- `VerificationError`: the file was made but failed its checks; nothing
  was written.
- `TfliteFileError`: bytes that are not a readable `.tflite` file;
  `PackedFileError` for a damaged `tflm_packed` file.
- `MissingDataError`: a full-integer format asked for without the sample
  inputs it calibrates on.
- `MissingExtraError`: the `[export]` extra is not installed (also an
  `ImportError`).

This module imports nothing heavy: the command line uses it before
TensorFlow loads.
"""

from __future__ import annotations

import importlib.util

#: Modules of the `[export]` extra, and the package that installs each.
EXTRA_MODULES = {
    "ai_edge_litert": "ai-edge-litert",
    "ai_edge_quantizer": "ai-edge-quantizer",
    "tflite_micro": "tflite-micro",
}
#: The command that installs them.
EXTRA_INSTALL = 'pip install "tfmot-discrete[export]"'


class ExportError(ValueError):
    """A model, file or argument that cannot be exported; the message says why.

    Attributes:
        log: What the converters and interpreters printed before the failure
            (captured while `export` ran quiet; empty otherwise). `str()`
            of the error ends with it.
    """

    log: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        if self.log.strip():
            text += "\n\nWhat the converters and interpreters printed:\n" + self.log.rstrip()
        return text

    @property
    def message(self) -> str:
        """The message without the captured output."""
        return super().__str__()


class VerificationError(ExportError):
    """The file was converted but failed verification; nothing was written.

    Attributes:
        report: The `Report` (an export) or `FileCheck` (a file) that failed.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class TfliteFileError(ExportError):
    """Bytes that are not a readable `.tflite` flatbuffer; the message says where."""


class PackedFileError(TfliteFileError):
    """A `tflm_packed` file that cannot be read back; the message says where."""


class MissingDataError(ExportError):
    """A full-integer format without `representative_data` to calibrate on.

    Attributes:
        format: The format asked for.
        reason: Why the model cannot do without it (may be empty).
    """

    def __init__(self, message: str, format: str, reason: str = ""):
        super().__init__(message)
        self.format = format
        self.reason = reason


class MissingExtraError(ExportError, ImportError):
    """A package of the `[export]` extra is not installed."""


class InterpreterError(ExportError, RuntimeError):
    """An interpreter refused a file or failed on it (in this process)."""


def missing_extras() -> list[str]:
    """The packages of the `[export]` extra that cannot be imported here."""
    missing = []
    for module, package in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


def require_extras() -> None:
    """Raises `MissingExtraError` naming the extra when a package of it is missing.

    Raises:
        MissingExtraError: With the install command in its first line.
    """
    missing = missing_extras()
    if missing:
        raise MissingExtraError(
            f"tflite_export needs the [export] extra: run `{EXTRA_INSTALL}`. "
            f"Missing: {', '.join(missing)}."
        )


def extra_error(error: ModuleNotFoundError) -> ExportError | None:
    """A `MissingExtraError` for an import of the extra that failed, else None."""
    root = (error.name or "").split(".")[0]
    if root not in EXTRA_MODULES:
        return None
    return MissingExtraError(
        f"tflite_export needs the [export] extra: run `{EXTRA_INSTALL}`. "
        f"Missing: {EXTRA_MODULES[root]} ({error})."
    )
