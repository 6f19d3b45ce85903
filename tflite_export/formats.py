"""Export formats (kept free of TensorFlow imports for the command line)."""

FORMATS = ("float", "int8", "int4", "full_int8", "tflm_packed")
