"""What TensorFlow, the converters and the interpreters log, kept out of sight.

Their C++ code writes to file descriptors 1 and 2 directly (TensorFlow's
start-up lines, the MLIR converter's `fully_quantize: ...` and absl `W0000`
lines, LiteRT's XNNPACK notice); their Python code goes through `logging`
(absl included) and `warnings`. `library_logs` sends all of it to a sink,
while `print` and `sys.stderr` keep writing where they wrote before. This
module imports nothing heavy, so a script can enter it before TensorFlow
loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

#: Packages whose own warnings are shown as one-line notes.
OWN_PACKAGES = ("tfmot_discrete", "tflite_export")
#: At most this many bytes of captured output are kept (the last ones).
KEEP_BYTES = 16 * 1024
#: What TensorFlow and XLA log whenever they start on a machine without a GPU
#: or with a generic CPU build: never the reason an export failed.
STARTUP_LINES = re.compile(
    r"cuda_platform\.cc|cudart_stub\.cc|cuda_dnn|cuda_fft|cuda_blas|failed call to cuInit"
    r"|Could not find cuda drivers|oneDNN custom operations|TensorFlow binary is optimized"
    r"|To enable the following instructions|rebuild TensorFlow with the appropriate"
    r"|All log messages before absl::InitializeLog|TF-TRT Warning|Unable to register cu"
)


def without_startup_lines(text: str) -> str:
    """`text` less TensorFlow's start-up lines (see `STARTUP_LINES`)."""
    return "".join(
        line for line in text.splitlines(keepends=True) if not STARTUP_LINES.search(line)
    )


class Captured:
    """What the libraries wrote inside a `library_logs` block (set at its end)."""

    def __init__(self):
        self.text = ""


def _own_stream(stream, fd: int):
    """A stream writing to a duplicate of `fd` when `stream` writes to `fd`
    itself; `stream` otherwise (captured in Python, as under pytest)."""
    try:
        ours = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        ours = False
    stream.flush()
    saved = os.dup(fd)
    if not ours:
        return saved, stream
    return saved, open(saved, "w", closefd=False, buffering=1)


@contextlib.contextmanager
def library_logs(verbose: bool = False, note=None):
    """Hides the libraries' own log lines unless `verbose`.

    Inside the block, file descriptors 1 and 2 point at a sink, Python
    `logging` below ERROR is off, and warnings are recorded instead of shown;
    `print` (to `sys.stdout`) and writes to `sys.stderr` still reach the
    terminal. Warnings raised by this project's own packages come out at the
    end as one line each, `note: ...`; other warnings and the hidden lines are
    kept (the last `KEEP_BYTES`) in the `Captured` object the block yields,
    for an error message. `TF_CPP_MIN_LOG_LEVEL` is set to 2 when
    unset, which quiets TensorFlow's C++ logging if it has not loaded yet.

    Args:
        verbose: show everything, change nothing. Defaults to `False`.
        note: called with each note line. Defaults to printing to `sys.stderr`.

    Example:

    >>> import os
    >>> with library_logs():
    ...     _ = os.write(1, b"a C++ line\\n")
    ...     print("ours")
    ours
    """
    captured = Captured()
    if verbose:
        yield captured
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved_out, out = _own_stream(sys.stdout, 1)
    saved_err, err = _own_stream(sys.stderr, 2)
    previous = sys.stdout, sys.stderr, logging.root.manager.disable
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logging.disable(logging.WARNING)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout, sys.stderr = out, err
        try:
            yield captured
        finally:
            out.flush()
            err.flush()
            sink.seek(max(0, os.fstat(sink.fileno()).st_size - KEEP_BYTES))
            captured.text = sink.read().decode(errors="replace")
            sys.stdout, sys.stderr = previous[:2]
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            logging.disable(previous[2])
    shown = set()
    for w in caught:
        first = (str(w.message).strip().splitlines() or [""])[0]
        if w.filename and any(f"{os.sep}{p}{os.sep}" in w.filename for p in OWN_PACKAGES):
            line = f"note: {first}"
            if line not in shown:
                shown.add(line)
                (note or (lambda s: print(s, file=sys.stderr)))(line)
        else:
            captured.text += f"{w.category.__name__}: {first}\n"
