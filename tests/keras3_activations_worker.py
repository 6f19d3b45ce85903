"""8-bit activations (`activations="int8"`) on one Keras 3 backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_activations_worker.py OUT_DIR

Writes to OUT_DIR, for `tests/test_keras3_activations.py` to hold against
TensorFlow's and TF-MOT's own operations:

- `fake_quant.npz`: `fake_quant` of fixed inputs at fixed ranges, and its
  gradient;
- `ranges.npz`: an `ActivationQuantizer`'s range of each tracking after
  each of fixed training batches, and its last output;
- `model.keras`: a Conv1D/BatchNorm/ReLU/Dense model with 8-bit activations,
  trained 3 steps with `fit` (jit), and `model.npz` its inputs, predictions
  and trained ranges.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from keras3_cases import activation_cases, activation_model

import tfmot_discrete as td
from tfmot_discrete.keras3.activations import ActivationQuantizer, fake_quant

ops = keras.ops
BACKEND = keras.backend.backend()


def _grad(x, lo, hi, g):
    """d sum(fake_quant(x) * g) / dx on this backend."""
    if BACKEND == "jax":
        import jax  # noqa: PLC0415

        return np.asarray(jax.grad(lambda t: (fake_quant(t, lo, hi) * g).sum())(x))
    import torch  # noqa: PLC0415

    t = torch.tensor(x, requires_grad=True)
    (fake_quant(t, lo, hi) * torch.tensor(g)).sum().backward()
    return t.grad.numpy()


def main(out: pathlib.Path) -> None:
    x, g, ranges, batches = activation_cases()
    values = [
        np.asarray(ops.convert_to_numpy(fake_quant(ops.array(x), lo, hi))) for lo, hi in ranges
    ]
    grads = [_grad(x, lo, hi, g) for lo, hi in ranges]
    np.savez(out / "fake_quant.npz", values=np.stack(values), grads=np.stack(grads))

    tracked = {}
    for tracking in ("moving_average", "all_values"):
        layer = ActivationQuantizer(tracking)
        seen = []
        for batch in batches:
            last = layer(ops.array(batch), training=True)
            seen.append([float(layer.range_min.value), float(layer.range_max.value)])
        tracked[tracking] = np.array(seen)
        tracked[tracking + "/last"] = ops.convert_to_numpy(last)
    np.savez(out / "ranges.npz", **tracked)

    keras.utils.set_random_seed(0)
    model, x, y = activation_model(keras)
    qat = td.quantize_model(model, {"conv|logits": "int8", ".*": td.ternary()}, activations="int8")
    qat.compile(keras.optimizers.Adam(1e-2), "mse")  # (jit on JAX, eager on PyTorch)
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    qat.save(out / "model.keras")
    trained = {
        layer.name: [float(layer.range_min.value), float(layer.range_max.value)]
        for layer in qat.layers
        if isinstance(layer, ActivationQuantizer)
    }
    np.savez(out / "model.npz", x=x, predictions=qat.predict(x, verbose=0))
    (out / "ranges.json").write_text(json.dumps(trained))
    (out / "checks.json").write_text(json.dumps({"backend": BACKEND, "passed": ["all"]}))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
