"""What the Keras 3 worker and the parity test share: the quantizer table and
the latent weights."""

import numpy as np
from conftest import QUANTIZERS

import tfmot_discrete as td

#: The conftest table, and a non-evenly spaced codebook of more than 8 values
#: (projected by a sorted search, not a select chain).
TABLE = dict(QUANTIZERS, power_of_two_4=td.power_of_two(bits=4))


def latent(seed=0, shape=(6, 5), dyadic=True):
    """Latent weights; dyadic ones (multiples of 1/64) make every channel mean
    exact in float32, whatever order a backend sums in."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1.4, 1.4, size=shape)
    return (np.round(w * 64) / 64 if dyadic else w).astype("float32")


def parity_cases():
    """`(key, quantizer or "int8", latent)` of the parity test: every
    deterministic quantizer on dyadic weights, the scale-free ones on random
    weights too (a channel mean of random weights may differ in its last bit
    between backends, which sum in different orders)."""
    out = []
    for name, q in dict(TABLE, int8="int8").items():
        if not isinstance(q, str) and q.stochastic:
            continue
        out.append((f"{name}/dyadic", q, latent(10)))
        if isinstance(q, str) or q.scale is None:
            out.append((f"{name}/random", q, latent(11, dyadic=False)))
    return out
