"""What the Keras 3 tests and their workers share: the quantizer table, the
latent weights, running the workers, and the codebook check."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from conftest import QUANTIZERS

import tfmot_discrete as td
from tfmot_discrete.core import quantizers as core_quantizers

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


def backend_env(backend: str) -> dict:
    """This process's environment for a child on Keras 3 `backend` that
    imports the repository's packages."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return env


def run_fresh(code: str, *args: str, backend: str = "tensorflow") -> str:
    """Runs `code` (with `args` in `sys.argv[1:]`) in a new Python process on
    Keras 3 `backend`; asserts it ended well and returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=backend_env(backend),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def run_workers(worker, backends, tmp_path_factory) -> dict:
    """Runs the script `worker` once per backend of `{backend: flags}`, side
    by side, each with its own output folder: `{backend: (return code,
    stderr, folder)}`."""
    runs = {}
    for backend, flags in backends.items():
        out = tmp_path_factory.mktemp(backend)
        env = backend_env(backend)
        err = open(out / "stderr.txt", "w")
        proc = subprocess.Popen(
            [sys.executable, str(worker), str(out), *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        runs[backend] = (proc, err, out)
    done = {}
    for backend, (proc, err, out) in runs.items():
        rc = proc.wait(timeout=600)
        err.close()
        done[backend] = (rc, (out / "stderr.txt").read_text(), out)
    return done


def passed_checks(workers: dict, backend: str) -> set:
    """The names of the checks the `backend` worker of `run_workers` passed
    (after asserting that it ended well, on that backend)."""
    rc, stderr, out = workers[backend]
    assert rc == 0, stderr[-4000:]
    report = json.loads((out / "checks.json").read_text())
    assert report["backend"] == backend
    return set(report["passed"])


def assert_on_codebook(state, latent, projected) -> None:
    """A projected Keras 3 weight is its codebook's values times its scale
    (an 8-bit weight is not checked here)."""
    from tfmot_discrete.keras3 import quantizers as k3q  # noqa: PLC0415  (imports Keras 3)

    q = state.quantizer
    if isinstance(q, core_quantizers.Int8WeightQuantizer):
        return
    s = k3q.scale_of(state, latent)
    idx = q.codebook.index_numpy(projected / s)
    np.testing.assert_allclose(projected, q.codebook.values[idx] * s, rtol=1e-6)


def activation_cases():
    """Inputs, upstream gradients, ranges and training batches of the 8-bit
    activation checks: inputs beyond every range, on levels and halfway
    between them; ranges that hold 0 inside, at an end, and off the grid."""
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [np.linspace(-8, 8, 1025), rng.normal(scale=3.0, size=1000), np.arange(-6, 6.01, 6 / 255)]
    ).astype("float32")
    g = rng.normal(size=x.shape).astype("float32")
    ranges = [(-6.0, 6.0), (-0.3, 2.7), (0.0, 1.0), (-1.0, 0.0), (-0.05, 7.3)]
    batches = [
        (rng.normal(size=(8, 5)) * s + c).astype("float32")
        for s, c in ((1.0, 0.0), (3.0, 1.0), (0.2, -0.5), (8.0, 0.0))
    ]
    return x, g, ranges, batches


def activation_model(keras):
    """A Conv1D -> BatchNorm -> ReLU -> Flatten -> Dense(relu) -> Dense model of
    `keras` (Keras 3), with inputs and regression targets."""
    L = keras.layers
    inp = keras.Input((16, 2), name="signal")
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Conv1D(6, 3, name="conv")(inp)))
    h = L.Dense(8, activation="relu", name="hidden")(L.Flatten(name="flat")(h))
    model = keras.Model(inp, L.Dense(3, name="logits")(h), name="act_model")
    rng = np.random.default_rng(4)
    # (Beyond +-6: an input's range only grows, from where the first batch puts it.)
    x = rng.normal(scale=4.0, size=(48, 16, 2)).astype("float32")
    y = rng.normal(size=(48, 3)).astype("float32")
    return model, x, y
