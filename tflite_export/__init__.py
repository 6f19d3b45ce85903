"""tflite_export: codebook-exact TFLite files from tfmot_discrete models."""

from tflite_export.convert import FORMATS
from tflite_export.convert import ExportError
from tflite_export.convert import load_model
from tflite_export.pipeline import Report
from tflite_export.pipeline import export

__all__ = [
    "FORMATS",
    "ExportError",
    "Report",
    "export",
    "load_model",
]
