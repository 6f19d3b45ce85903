"""The codebook: the finite set of values a quantized weight may take."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from tfmot_discrete.core import text

#: Largest number of distinct values a codebook may hold.
MAX_SIZE = 65536

#: Smallest normal float32 magnitude. TensorFlow on CPU flushes smaller
#: (subnormal) numbers to zero and NumPy does not, so a codebook value or
#: midpoint below it would project differently on the two paths.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


#: Preset names a user may pass as `values` by mistake, and the call they meant.
PRESETS = {
    "binary": "td.binary()",
    "ternary": "td.ternary()",
    "power_of_two": "td.power_of_two(bits=3)",
    "powers_of_two": "td.power_of_two(bits=3)",
}


def _flatten_values(values) -> list[float]:
    """Turns the user's `values` into a flat list of floats, or raises."""
    if isinstance(values, Codebook):
        return list(values.values)
    if isinstance(values, str) and values.strip().lower() in PRESETS:
        name = values.strip().lower()
        raise ValueError(
            f"`values` is the list of numbers itself; for the {name} codebook use the "
            f"preset `{PRESETS[name]}` (it holds the values and a fitting scale). "
            f"Received: values={values!r}"
        )
    if isinstance(values, str) and values.strip().lower() == "int8":
        raise ValueError(
            "`values` is the list of numbers itself; 'int8' is not a codebook but a "
            "value of a `td.quantize_model` mapping (8-bit weights, e.g. "
            "`{'logits': 'int8', '.*': td.ternary()}`). Received: values='int8'"
        )
    if isinstance(values, (str, bytes)) or values is None:
        raise ValueError(
            f"`values` must be a non-empty list of finite real numbers. Received: values={values!r}"
        )
    if hasattr(values, "numpy") and callable(values.numpy):  # an eager tensor
        values = values.numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(
                "`values` must be one-dimensional (a flat list of numbers); "
                f"got an array of shape {values.shape}. Received: values={values!r}"
            )
        if values.dtype.kind not in "biuf":
            raise ValueError(
                "`values` must hold real numbers; got an array of dtype "
                f"{values.dtype}. Received: values={values!r}"
            )
        return [float(v) for v in values]
    if not isinstance(values, Iterable):
        raise ValueError(
            "`values` must be a list of finite real numbers, not a "
            f"{type(values).__name__}. Received: values={values!r}"
        )
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(
            v, (numbers.Real, np.integer, np.floating)
        ):
            raise ValueError(
                "Every entry of `values` must be a real number; got "
                f"{v!r} of type {type(v).__name__}. Received: values={values!r}"
            )
        out.append(float(v))
    return out


def midpoints(values) -> np.ndarray:
    """Decision boundaries between sorted values (float64; no overflow for huge ones)."""
    v = np.asarray(values, dtype=np.float64)
    return v[:-1] / 2.0 + v[1:] / 2.0


def _check_not_subnormal(uniq: np.ndarray, values) -> None:
    """Refuses nonzero values and midpoints below `FLOAT32_TINY` in magnitude."""
    small = (uniq != 0) & (np.abs(uniq) < FLOAT32_TINY)
    if np.any(small):
        raise ValueError(
            f"`values` must not hold subnormal float32 numbers (0 < |v| < {FLOAT32_TINY:.7g}); "
            f"it holds {float(uniq[small][0])!r}. TensorFlow on CPU flushes them to zero and "
            "NumPy does not, so projections would differ. Use 0 or larger values. "
            f"Received: values={values!r}"
        )
    mids = midpoints(uniq)
    small = (mids != 0) & (np.abs(mids) < FLOAT32_TINY)
    if np.any(small):
        i = int(np.argmax(small))
        raise ValueError(
            f"`values` {float(uniq[i])!r} and {float(uniq[i + 1])!r} have the midpoint "
            f"{float(mids[i])!r}, a subnormal float32 number (0 < |m| < {FLOAT32_TINY:.7g}): "
            "TensorFlow on CPU flushes it to zero and NumPy does not, so projections would "
            f"differ. Received: values={values!r}"
        )


def _warn_repeats(flat: list[float], values) -> None:
    """A codebook is a set: a value listed twice is kept once, with a warning
    naming it (a repeat is usually a typo for another value)."""
    seen, repeated = set(), []
    for v in flat:
        v += 0.0  # -0.0 is 0.0
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    shown = ", ".join(f"{v:g}" if float(f"{v:g}") == v else repr(v) for v in repeated)
    warnings.warn(
        f"`values` lists {shown} more than once; a codebook is a set, so each value is kept "
        f"once ({len(seen)} distinct values). Received: values={values!r}",
        UserWarning,
        stacklevel=4,
    )


class Codebook:
    """A validated, sorted set of distinct real values.

    Ties: a number exactly halfway between two neighbouring values is mapped
    to the larger of the two (so `0.0` goes to `+1` in `{-1, +1}`), every time.

    Args:
        values: The allowed values, in any order. A value listed twice is kept
            once, with a `UserWarning` naming it.
            At least two distinct finite real numbers.

    Raises:
        ValueError: If `values` is empty, has fewer than 2 distinct entries,
            holds NaN, inf, non-numbers or nested lists, more than 65536
            entries, or a nonzero value (or midpoint between neighbours)
            smaller in magnitude than `FLOAT32_TINY` (a float32 subnormal).

    Example:

    >>> cb = Codebook([1, -1, 0.5, -0.5])
    >>> cb.values.tolist()
    [-1.0, -0.5, 0.5, 1.0]
    >>> cb.project_numpy([0.8, -0.1, 0.0, 2.0]).tolist()
    [1.0, -0.5, 0.5, 1.0]
    >>> cb.bits
    2
    """

    def __init__(self, values):
        flat = _flatten_values(values)
        if not flat:
            raise ValueError(
                "`values` must hold at least 2 distinct numbers; it is empty. "
                f"Received: values={values!r}"
            )
        bad = [v for v in flat if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"`values` must be finite; it holds {bad[0]!r}. Received: values={values!r}"
            )
        # +0.0 and -0.0 are the same value.
        uniq = np.unique(np.asarray(flat, dtype=np.float64) + 0.0)
        if uniq.size < 2:
            raise ValueError(
                "`values` must hold at least 2 distinct numbers (a single value "
                f"cannot be trained). Received: values={values!r}"
            )
        if uniq.size > MAX_SIZE:
            raise ValueError(
                f"`values` may hold at most {MAX_SIZE} distinct numbers; it holds "
                f"{uniq.size}. Received: values=<{uniq.size} numbers>"
            )
        if uniq.size < len(flat):
            _warn_repeats(flat, values)
        _check_not_subnormal(uniq, values)
        self._values = uniq
        self._values.setflags(write=False)

    @property
    def values(self) -> np.ndarray:
        """The distinct values, sorted ascending (float64, read-only)."""
        return self._values

    @property
    def size(self) -> int:
        """Number of distinct values, `K`."""
        return int(self._values.size)

    def __len__(self) -> int:
        return self.size

    @property
    def bits(self) -> int:
        """Bits needed to index a value: `ceil(log2 K)`."""
        return max(1, math.ceil(math.log2(self.size)))

    @property
    def low(self) -> float:
        return float(self._values[0])

    @property
    def high(self) -> float:
        return float(self._values[-1])

    @property
    def max_abs(self) -> float:
        return float(np.max(np.abs(self._values)))

    @property
    def midpoints(self) -> np.ndarray:
        """The `K - 1` decision boundaries between neighbouring values."""
        return midpoints(self._values)

    def project_numpy(self, x) -> np.ndarray:
        """Nearest value for each entry of `x` (ties go to the larger value)."""
        x = np.asarray(x, dtype=np.float64)
        idx = np.searchsorted(self.midpoints, x, side="right")
        return self._values[idx]

    def index_numpy(self, x) -> np.ndarray:
        """Index into `values` of the nearest value for each entry of `x`."""
        x = np.asarray(x, dtype=np.float64)
        return np.searchsorted(self.midpoints, x, side="right")

    def integer_step(self, qmax: int):
        """The largest step `s` so that every value divided by `s` is an integer
        of magnitude at most `qmax`, or `None` when there is none.

        Scale-invariant: `{±1, ±0.5}` and `{±0.37, ±0.185}` both give codes
        ±6, ±3 with `qmax = 7` (steps `1/6` and `0.37/6`); binary and ternary
        codebooks give `max|c| / qmax`.
        """
        nonzero = [float(v) for v in self._values if v != 0]
        ref = min(abs(v) for v in nonzero)
        # Every value is n_i x step and ref = n_ref x step with n_ref <= qmax, so
        # v / ref is a fraction whose denominator is at most qmax.
        fracs = []
        for v in nonzero:
            r = v / ref
            f = Fraction(r).limit_denominator(qmax)
            if abs(float(f) - r) > 1e-9 * abs(r):
                return None
            fracs.append(f)
        den = 1
        for f in fracs:
            den = den * f.denominator // math.gcd(den, f.denominator)
        num = 0
        for f in fracs:
            num = math.gcd(num, abs(int(f * den)))
        unit = Fraction(num, den)  # the coarsest common step, in units of ref
        biggest = max(abs(f / unit) for f in fracs)
        if biggest > qmax:
            return None
        return ref * float(unit) / (qmax // int(biggest))

    def get_config(self) -> dict:
        return {"values": [float(v) for v in self._values]}

    def __eq__(self, other) -> bool:
        return isinstance(other, Codebook) and np.array_equal(self._values, other._values)

    def __hash__(self) -> int:
        return hash(tuple(self._values.tolist()))

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:g}" for v in self._values[: text.SHOWN_VALUES])
        more = ", ..." if self.size > text.SHOWN_VALUES else ""
        return f"Codebook([{vals}{more}])"
