"""Export formats and targets (kept free of TensorFlow imports for the command line)."""

FORMATS = ("float", "int8", "int4", "full_int8", "tflm_packed")
#: Interpreters a `full_int8` file is verified on: TFLM (and LiteRT), or LiteRT only.
TARGETS = ("tflm", "litert")
