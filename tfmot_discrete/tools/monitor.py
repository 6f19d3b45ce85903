"""`CodebookMonitor`: what training does to the codebook weights, epoch by epoch."""

from __future__ import annotations

import numpy as np

from tfmot_discrete.core.quantizers import CodebookQuantizer
from tfmot_discrete.core.specs import is_keras3_object
from tfmot_discrete.tools.callbacks import Callback
from tfmot_discrete.tools.summary import codebook_indices, value_shares


def _fmt_value(v: float) -> str:
    return f"{v:g}"


class CodebookMonitor(Callback):
    """Logs, per epoch and per codebook weight, value shares and the flip rate.

    At the end of every epoch each codebook weight is projected as the model
    uses it at inference. Two kinds of entries go into the epoch's `logs`
    (so `History`, `CSVLogger` and `TensorBoard` record them, provided they
    come after this callback in the `callbacks` list):

    - `"<layer>/<weight>/flip_rate"`: the share of weights whose projected
      codebook value changed since the end of the previous epoch (since the
      start of training for the first epoch). It falls towards 0 as the
      weights settle.
    - `"<layer>/<weight>/share_<value>"`: the share of weights at each
      codebook value (for codebooks of at most `max_shares` values), the
      numbers `td.summary` shows.

    With `verbose=1`, one progress line per epoch sums it up.

    The same class goes to the `fit` of a tf_keras model and of a Keras 3
    model (on any backend); a Keras 3 model's weights are read through the
    Keras 3 path's projection, a tf_keras model's through TF-MOT's
    wrappers, and creating one loads neither. Given to a `Distiller`'s `fit`, it monitors the student.

    Args:
        verbose: `0` for silence, `1` for one line per epoch. Defaults to `1`.
        max_shares: Log shares only for codebooks of at most this many
            values (a 256-value codebook would add 256 columns). Defaults
            to `16`.
        print_fn: Called with each progress line. Defaults to `print`.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> model = td.keras.Sequential([td.keras.Input((4,)), td.keras.layers.Dense(2, name="d")])
    >>> qat = td.quantize_model(model, td.binary())
    >>> qat.compile("sgd", "mse")
    >>> history = qat.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
    ...                   callbacks=[td.CodebookMonitor(verbose=0)])
    >>> sorted(k for k in history.history if k.startswith("d/"))
    ['d/kernel/flip_rate', 'd/kernel/share_-1', 'd/kernel/share_1']
    """

    def __init__(self, verbose=1, max_shares=16, print_fn=print):
        super().__init__()
        if verbose not in (0, 1, True, False):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        if isinstance(max_shares, bool) or not isinstance(max_shares, int) or max_shares < 0:
            raise ValueError(
                f"`max_shares` must be a non-negative int. Received: max_shares={max_shares!r}"
            )
        self.verbose = int(verbose)
        self.max_shares = max_shares
        self.print_fn = print_fn
        self._previous: dict[str, np.ndarray] = {}

    def _snapshot(self) -> dict[str, tuple[CodebookQuantizer, np.ndarray]]:
        # A Distiller trains its student: the codebook weights are the student's.
        model = getattr(self.model, "student", self.model)
        if is_keras3_object(model):
            from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415  (imports Keras 3)

            return {w.label: (w.quantizer, w.codes) for w in k3.codebook_weights(model)}
        from tfmot_discrete.tfk.weights import codebook_items  # noqa: PLC0415  (imports TF-MOT)

        return {
            item.label: (
                item.quantizer,
                codebook_indices(item.quantizer, item.latent, item.qvars),
            )
            for item in codebook_items(model)
        }

    def measure(self) -> dict[str, float]:
        """Flip rates (against the last measurement) and value shares, now.

        Returns:
            `{"<layer>/<weight>/flip_rate": float, "<layer>/<weight>/share_<value>":
            float, ...}`; the flip rate is omitted for a weight measured for
            the first time.
        """
        out = {}
        for label, (q, codes) in self._snapshot().items():
            before = self._previous.get(label)
            if before is not None and before.shape == codes.shape:
                out[f"{label}/flip_rate"] = float(np.mean(before != codes))
            self._previous[label] = codes
            if q.codebook.size <= self.max_shares:
                usage = value_shares(codes, q.codebook.size)
                for v, share in zip(q.codebook.values, usage):
                    out[f"{label}/share_{_fmt_value(v)}"] = float(share)
        return out

    def on_train_begin(self, logs=None):
        self._previous = {}
        self.measure()
        if self.verbose and not self._previous:
            self.print_fn("CodebookMonitor: the model has no codebook weights to monitor.")

    def on_epoch_end(self, epoch, logs=None):
        values = self.measure()
        if logs is not None:
            logs.update(values)
        if self.verbose and self._previous:
            self.print_fn(self.progress_line(epoch, values))

    def progress_line(self, epoch: int, values: dict[str, float]) -> str:
        """One line: per weight, its flip rate and its value shares.

        Args:
            epoch: The 0-based epoch index (printed 1-based, as Keras does).
            values: What `measure` returned.

        Returns:
            The line, e.g. `codebook epoch 2: dense/kernel flips 1.2% [-1 49% | 1 51%]`.
        """
        parts = []
        for label in self._previous:
            flip = values.get(f"{label}/flip_rate")
            text = f"{label} flips {flip:.1%}" if flip is not None else label
            prefix = f"{label}/share_"
            shares = [
                f"{k[len(prefix) :]} {v:.0%}" for k, v in values.items() if k.startswith(prefix)
            ]
            if shares:
                text += " [" + " | ".join(shares) + "]"
            parts.append(text)
        return f"codebook epoch {epoch + 1}: " + "; ".join(parts)
