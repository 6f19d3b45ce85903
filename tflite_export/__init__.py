"""tflite_export: codebook-exact TFLite files from tfmot_discrete models.

The heavy modules (TensorFlow, the converters) load on first use, so the
console script can set up logging before TensorFlow starts.
"""

import importlib

_LAZY = {
    "FORMATS": "tflite_export.convert",
    "ExportError": "tflite_export.errors",
    "load_model": "tflite_export.convert",
    "Report": "tflite_export.pipeline",
    "export": "tflite_export.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tflite_export' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
