"""Reading a `.tflite` file: the header check and the parse, written once.

The bottom of the package with `schema.py`: it imports neither TensorFlow
nor another module of this package but `errors`, so the interpreters' child
process and the command line can read files before TensorFlow loads.
"""

from __future__ import annotations

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

from tflite_export.errors import TfliteFileError

#: The flatbuffer file identifier of a `.tflite` file, at bytes 4 to 8.
IDENTIFIER = b"TFL3"
#: Custom operator TFLM's compressor inserts in front of each layer that
#: reads a packed tensor.
DECODE_OP = "TFLM_DECODE"


def check_header(model_bytes: bytes) -> None:
    """Raises `TfliteFileError` unless `model_bytes` starts like a `.tflite` file.

    Example:

    >>> check_header(b"\\0" * 8)
    Traceback (most recent call last):
    ...
    tflite_export.errors.TfliteFileError: Not a .tflite flatbuffer (no TFL3 identifier). Received: 8 bytes
    """
    if len(model_bytes) < 8 or bytes(model_bytes[4:8]) != IDENTIFIER:
        raise TfliteFileError(
            f"Not a .tflite flatbuffer (no TFL3 identifier). Received: {len(model_bytes)} bytes"
        )


def read_model(model_bytes: bytes):
    """The flatbuffer as objects (TFLM's schema: no TensorFlow import).

    Raises:
        TfliteFileError: Without the identifier, or when the parse fails.
    """
    check_header(model_bytes)
    try:
        return schema_py_generated.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    except Exception as e:
        raise TfliteFileError(f"Cannot read the flatbuffer: {type(e).__name__}: {e}") from e


def is_decode(operator_code) -> bool:
    """True for the operator code of TFLM's `DECODE`."""
    return (operator_code.customCode or b"") in (DECODE_OP, DECODE_OP.encode())


def is_packed(model_bytes: bytes) -> bool:
    """True for a file with TFLM `DECODE` operators (LiteRT cannot run it)."""
    try:
        model = read_model(model_bytes)
    except TfliteFileError:
        return False
    return any(is_decode(c) for c in model.operatorCodes or [])
