"""One line per stage of a long export, with the time elapsed.

A stage that lasts more than `AFTER_S` seconds gets one line on stderr,
`tflite-export: converting (int8) ... 12 s` (seconds since the export
started), written once the stage has lasted that long; quick stages and
quick exports print nothing. The command line always shows them; the Python
API with `verbose=True`.
"""

from __future__ import annotations

import sys
import threading
import time

#: A stage prints its line once it has lasted this many seconds.
AFTER_S = 2.0


class Progress:
    """Announces the stages of one export (a no-op when not `enabled`).

    Args:
        enabled: Print anything at all.
        after: Seconds a stage lasts before its line is printed. Defaults to
            `AFTER_S` (read when the object is made).
        stream: Where lines go. Defaults to `sys.stderr` at construction.

    Example:

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(True, after=0.0, stream=out)
    >>> p.stage("converting (int8)")
    >>> p.close()
    >>> out.getvalue().startswith("tflite-export: converting (int8) ... ")
    True
    """

    def __init__(self, enabled: bool, after: float | None = None, stream=None):
        self.enabled = enabled
        self.after = AFTER_S if after is None else after
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.lines: list[str] = []
        self._timer = None
        self._lock = threading.Lock()

    def _announce(self, name: str) -> None:
        with self._lock:
            line = f"tflite-export: {name} ... {time.perf_counter() - self.start:.0f} s"
            self.lines.append(line)
            print(line, file=self.stream, flush=True)

    def stage(self, name: str) -> None:
        """Ends the current stage and starts `name`."""
        self.close()
        if not self.enabled:
            return
        if self.after <= 0:
            self._announce(name)
            return
        self._timer = threading.Timer(self.after, self._announce, args=(name,))
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """Ends the current stage (its line is not printed if not yet due)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
