"""Running an interpreter in a child process, so that its crash is not ours.

TFLM's interpreter ends the process (`abort()`, SIGABRT) on some models, and
no interpreter promises to survive every malformed file. `run_in_child` runs
a file in a child Python process that imports only NumPy and the
interpreters (not TensorFlow: it starts in about a second), and turns a
crash, an error or a hang into an `ExportError` naming what failed. The child
serves one request after another and is started again after a crash, so a
process pays its start-up once.

This is the parent side; it imports no other module of the package but
`errors`. The child side is `tflite_export.child`:

    python -m tflite_export.child   (reads requests from stdin)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np

from tflite_export.errors import ExportError

#: Seconds an interpreter may take before the child is killed.
TIMEOUT = 600
KINDS = ("litert", "tflm", "tflm_compare")


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class _Child:
    """One long-lived child process serving requests, started again after a crash."""

    def __init__(self):
        self.proc = None
        self.lock = threading.Lock()

    def _start(self):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tflite_export.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            text=True,
        )

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()

    def ask(self, request: str, timeout: float) -> tuple[str, int | None]:
        """Sends one request; `(reply line, None)` or `("", exit status)` if it died."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self._start()
            proc = self.proc
            try:
                proc.stdin.write(request + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if not ready:
                self.stop()
                return "", None
            line = proc.stdout.readline()
            if not line:
                status = proc.wait()
                self.stop()
                return "", status
            return line.strip(), 0


_CHILD = _Child()
atexit.register(_CHILD.stop)


def run_in_child(
    kind: str,
    model_bytes: bytes,
    inputs: list[np.ndarray] | None,
    raw: bool = False,
    timeout=TIMEOUT,
    reference: bytes | None = None,
) -> list[np.ndarray]:
    """Runs a file with LiteRT or TFLM in the child process (`tflite_export.child`).

    Args:
        kind: `"litert"`, `"tflm"` or `"tflm_compare"` (a tflm_packed file
            against its `full_int8` file, `reference`).
        model_bytes: The `.tflite` file.
        inputs: One float array `(N, ...)` per model input; `None` runs 8
            random inputs (for `"litert"` it then also reads every tensor: a
            probe of a file from elsewhere).
        raw: Outputs as stored (int8 stays int8) instead of as float64.
            Defaults to `False`.
        timeout: Seconds before the child is killed. Defaults to `TIMEOUT`.
        reference: For `"tflm_compare"`: the `full_int8` file. Defaults to
            `None`.

    Returns:
        One array `(N, ...)` per model output, as the in-process runner returns.

    Raises:
        ExportError: The interpreter crashed the child (the signal is named),
            raised an error (its message is given) or did not finish in time.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {list(KINDS)}. Received: kind={kind!r}")
    name = {"litert": "LiteRT", "tflm": "TFLM", "tflm_compare": "TFLM"}[kind]
    with tempfile.TemporaryDirectory(prefix="tflite_export_") as tmp:
        request, result = os.path.join(tmp, "request.npz"), os.path.join(tmp, "result.npz")
        arrays = {f"x{i}": np.asarray(x) for i, x in enumerate(inputs or [])}
        np.savez(
            request,
            model=np.frombuffer(model_bytes, np.uint8),
            kind=np.array(kind),
            raw=np.array(raw),
            reference=np.frombuffer(reference or b"", np.uint8),
            **arrays,
        )
        reply, status = _CHILD.ask(f"{request}\t{result}", timeout)
        if status is None:
            raise ExportError(
                f"The {name} interpreter did not finish within {timeout} s; it was stopped."
            )
        if status != 0:
            how = _signal_name(status) if status < 0 else f"exit status {status}"
            raise ExportError(
                f"The {name} interpreter crashed ({how}) while loading or running the file; "
                "it ran in a child process, this one is unharmed."
            )
        if reply != "ok":
            raise ExportError(f"The {name} interpreter refused the file: {reply}")
        with np.load(result, allow_pickle=False) as f:
            return [f[f"y{i}"] for i in range(len(f.files))]
