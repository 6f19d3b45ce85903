"""The child side of `tflite_export.tfbackend`: exports a Keras 3 file under TensorFlow.

    KERAS_BACKEND=tensorflow python -m tflite_export.tfbackend_child REQUEST.pkl RESULT.pkl

reads the request the parent wrote (the `.keras` file, the output path,
`export`'s arguments, the modules defining the model's layer classes),
imports those modules, runs `export` and writes `{"report": Report}` or the
error (`{"error": class name, "message", "log", "report"}`) to RESULT.pkl. A
process entry point, at the top of the package with `pipeline` and `__main__`.
"""

from __future__ import annotations

import importlib
import pickle
import sys

from tflite_export import pipeline
from tflite_export.errors import ExportError


def main(argv) -> int:
    request, result = argv
    with open(request, "rb") as f:
        req = pickle.load(f)
    import tfmot_discrete.keras3  # noqa: F401, PLC0415  (registers the Keras 3 layers)

    for module in req["modules"]:
        importlib.import_module(module)
    try:
        answer = {"report": pipeline.export(req["model"], req["path"], **req["kwargs"])}
    except ExportError as e:
        answer = {
            "error": type(e).__name__,
            "message": e.message,
            "log": e.log,
            "report": getattr(e, "report", None),
            "format": getattr(e, "format", None),
            "reason": getattr(e, "reason", ""),
        }
    with open(result, "wb") as f:
        pickle.dump(answer, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
