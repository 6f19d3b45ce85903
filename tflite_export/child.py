"""The child side of `tflite_export.isolation`: runs interpreters for the parent.

    python -m tflite_export.child

reads one request per line of stdin (`REQUEST.npz<TAB>RESULT.npz`), runs it
with `runners` in this process, writes the outputs to `RESULT.npz` and
answers `ok` or the error's first line. It imports NumPy and the
interpreters, not TensorFlow, so it starts in about a second. A process
entry point, at the top of the package with `pipeline` and `__main__`.
"""

from __future__ import annotations

import sys

import numpy as np

from tflite_export import inputs, runners


def _handle(request: str, result: str) -> str:
    with np.load(request, allow_pickle=False) as f:
        model = f["model"].tobytes()
        kind, raw = str(f["kind"]), bool(f["raw"])
        reference = f["reference"].tobytes()
        n = sum(1 for k in f.files if k.startswith("x"))
        xs = [f[f"x{i}"] for i in range(n)] if n else None
    try:
        if kind == "tflm":
            outputs = runners.run_tflm_here(model, xs, dequantize=not raw)
        elif kind == "tflm_compare":
            outputs = [runners.tflm_compare_here(model, reference, xs)]
        elif xs is None:
            outputs = _probe_litert(model)
        else:
            outputs = runners.run_litert(model, xs, raw=raw)
    except Exception as e:  # noqa: BLE001 - any error is reported to the parent, which raises
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        return f"{type(e).__name__}: {lines[0] if lines else 'no message'}"
    np.savez(result, **{f"y{i}": y for i, y in enumerate(outputs)})
    return "ok"


def _probe_litert(model: bytes) -> list[np.ndarray]:
    """Everything a check does with a file from elsewhere: run it on random
    inputs, then read every tensor."""
    outputs = runners.run_litert(model, inputs.random_file_inputs(model))
    it = runners.interpreter(model)
    for d in it.get_tensor_details():
        try:
            it.get_tensor(d["index"])
        except ValueError:
            pass
    return outputs


def serve() -> int:
    """The child: one request (`REQUEST.npz<TAB>RESULT.npz`) per line of stdin."""
    for line in sys.stdin:
        request, result = line.rstrip("\n").split("\t")
        print(_handle(request, result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
