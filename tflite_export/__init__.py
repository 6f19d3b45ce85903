"""tflite_export: codebook-exact TFLite files from tfmot_discrete models.

The heavy modules (TensorFlow, the converters) load on first use, so the
console script can check its arguments and set up logging before TensorFlow
starts. Without the `[export]` extra, using them raises `MissingExtraError`
(an `ExportError` and an `ImportError`) that names the extra to install.

Modules, from the bottom up (each imports only modules of earlier groups;
tests/test_export_layers.py holds the list):
errors, formats, logs, progress, agreement | files, compat, schema, reading, sequence
(file reading) | micro, exact, isolation, resolver | runners, packed, keras3,
project_files | inputs, convert, budget, project (a TFLM project from a
file) | verify, native (Keras 3 as it is), tfbackend | report | lattice |
pipeline (the flow), child (the interpreters' process) | __main__ (the
command line), tfbackend_child (the TensorFlow process of a JAX or PyTorch
model).
"""

import importlib

from tflite_export.errors import extra_error, require_extras

_LAZY = {
    "AgreementWarning": "tflite_export.agreement",
    "FORMATS": "tflite_export.formats",
    "TARGETS": "tflite_export.formats",
    "ExportError": "tflite_export.errors",
    "FileCheck": "tflite_export.verify",
    "MissingDataError": "tflite_export.errors",
    "MissingExtraError": "tflite_export.errors",
    "PackedFileError": "tflite_export.errors",
    "Report": "tflite_export.report",
    "TfliteFileError": "tflite_export.errors",
    "VerificationError": "tflite_export.errors",
    "export": "tflite_export.pipeline",
    "load_model": "tflite_export.convert",
    "verify_file": "tflite_export.verify",
}

__all__ = sorted(_LAZY)
#: Modules that need the `[export]` extra.
_NEEDS_EXTRA = ("tflite_export.convert", "tflite_export.pipeline", "tflite_export.verify")


def __getattr__(name):
    if name in _LAZY:
        if _LAZY[name] in _NEEDS_EXTRA:
            require_extras()
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as e:
            error = extra_error(e)
            if error is None:
                raise
            raise error from e
        return getattr(module, name)
    raise AttributeError(f"module 'tflite_export' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
