"""Learned codebook values (`CodebookQuantizer(..., learn_values=True)`), as
NumPy: the grid the values live on and the projection that keeps them there.

Design:

- What trains. One vector of `K` values per quantized weight (per layer, not
  per channel), in units of the weight's channel scale, initialized from the
  codebook list (put on the grid below). A weight entry takes the nearest
  learned value (ties go up), `w_q = s_c x v[i(w / s_c)]`, and its latent
  weight gets the straight-through gradient of a fixed codebook (gated and
  clipped to the range of the list given). Each value gets the sum of the
  upstream gradient over the entries assigned to it, times their channel
  scale: `dL/dv_k = sum_{i(w) = k} dL/dw_q x s_c` (TTQ's gradient for its
  two values, LQ-Nets' for a basis).
- The grid. The values the layer computes with are integers times a power of
  two, `v_k = n_k x g` with `|n_k| <= VALUE_QMAX` (127, the int8 range) and
  `g = 2^e` the smallest power of two with `127 x g >= max|v|`. Products and
  quotients by `g` are exact in float32, so the layer's weight
  `n_k x g x s_c` is bit for bit what an integer file stores: the code `n_k`
  with the channel step `g x s_c` (int8 weight-only, `full_int8` and the LUT
  of `tflm_packed`). A codebook of powers of two keeps its exact values
  (`{±1, ±0.5}` is `{±64, ±32} x 2^-6`); other values start at their nearest
  grid point.
- Order and distinctness. The trainable vector is kept sorted, with a gap of
  at least one grid step, by a constraint after every optimizer update
  (`project_values(v, snap=False)`); the forward pass reads
  `project_values(v)` (the same, rounded to the grid; a straight-through
  gradient to `v`). The rounding is not written back into the variable, so an
  update smaller than a grid step is not lost. The projection: sort, divide
  by `g`, round, clip to `[-127, 127]`, raise each code to one above the
  code below it, cap each at its room below `127`. Every step is exact, so
  NumPy, TensorFlow, JAX and PyTorch give the same values, bit for bit;
  `K <= 2 x 127 + 1` codes fit.
- int4 files. A 4-bit tensor holds codes of `[-7, 7]`, which the learned
  values (codes up to 127) generally are not: a learned-value weight whose
  values have no exact int4 lattice is stored as int8 inside an `int4` file
  (as a weight trained at 8 bits is), and the report says so.

References:
    Zhu et al., Trained Ternary Quantization (2017); Zhang et al., LQ-Nets
    (2018).
"""

from __future__ import annotations

import numpy as np

#: Largest code of a learned value: the values are integers of
#: `[-VALUE_QMAX, VALUE_QMAX]` times a power-of-two step.
VALUE_QMAX = 127

#: Most values a learned codebook may hold (distinct codes of the int8 range).
MAX_LEARNED_SIZE = 2 * VALUE_QMAX + 1

#: Exponents of the power-of-two steps, as a table: `g = 2^e` for `e` in
#: `[STEP_EXPONENTS[0], STEP_EXPONENTS[-1]]` (normal float32 numbers, and
#: `127 x g` finite). Both paths read `g` from it with a comparison and a
#: gather, exact on every backend (no `log2` or `pow`).
STEP_EXPONENTS = np.arange(-100, 101)

#: The steps themselves, ascending (exact in float32).
STEPS = np.ldexp(1.0, STEP_EXPONENTS).astype(np.float32)


def grid_step(values) -> np.float32:
    """The grid step of `values`: the smallest power of two `g` with
    `127 x g >= max|values|` (the smallest step of the table for zeros).

    Example:

    >>> float(grid_step([-1.0, 0.0, 1.0]))
    0.015625
    """
    m = np.max(np.abs(np.asarray(values, np.float32)))
    i = int(np.sum(np.float32(VALUE_QMAX) * STEPS < m))
    return STEPS[min(i, STEPS.size - 1)]


def project_values(values, snap=True) -> np.ndarray:
    """The learned values as the layer uses them: sorted, on the grid,
    distinct by at least one step (float32; see the module's design).

    `snap=False` keeps them off the grid (the constraint on the trainable
    vector): sorted, at least one step apart, inside `±127` steps.

    Example:

    >>> project_values([1.0, -0.3, 0.0]).tolist()
    [-0.296875, 0.0, 1.0]
    >>> project_values([0.5, 0.5, -1.0]).tolist()
    [-1.0, 0.5, 0.515625]
    """
    v = np.sort(np.asarray(values, np.float32))
    k = v.size
    g = grid_step(v)
    c = v / g
    if snap:
        c = np.round(c)
    q = np.float32(VALUE_QMAX)
    c = np.clip(c, -q, q)
    ramp = np.arange(k, dtype=np.float32)
    c = np.maximum.accumulate(c - ramp) + ramp  # each at least one above the one below
    c = np.minimum(c, q - (k - 1) + ramp)  # room for the ones above, under 127
    return (c * g).astype(np.float32)


def codes_of(values) -> np.ndarray:
    """The integer codes `n_k` of values on the grid (`values / grid_step`).

    Example:

    >>> codes_of(project_values([-1.0, 0.0, 0.5])).tolist()
    [-64, 0, 32]
    """
    v = np.asarray(values, np.float32)
    return np.round(v / grid_step(v)).astype(np.int64)


def check_size(size: int, values) -> None:
    """Refuses a codebook too large to learn on the grid."""
    if size > MAX_LEARNED_SIZE:
        raise ValueError(
            f"`learn_values=True` takes at most {MAX_LEARNED_SIZE} values (distinct codes of "
            f"the int8 grid the learned values stay on); the codebook has {size}. Use fewer "
            f"values or learn_values=False. Received: values=<{size} numbers>"
        )
