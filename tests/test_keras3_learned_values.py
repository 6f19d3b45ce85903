"""Learned codebook values (`learn_values=True`) on Keras 3: the TensorFlow
and JAX backends, each in its own process (`keras3_learned_worker.py`)."""

import os
import pathlib
import subprocess
import sys

WORKER = pathlib.Path(__file__).with_name("keras3_learned_worker.py")


def test_keras3_tensorflow_and_jax_train_strip_and_export_learned_values(tmp_path):
    """The Keras 3 path, one process per backend: values move, stay on the
    grid, the stripped weights and an int8 file hold exactly them."""
    runs = {}
    for backend in ("tensorflow", "jax"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        root = str(pathlib.Path(__file__).parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
        out = tmp_path / backend
        out.mkdir()
        runs[backend] = subprocess.Popen(
            [sys.executable, str(WORKER), str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    for backend, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{backend}: {err[-3000:]}"
        assert (tmp_path / backend / "ok").read_text() == backend
