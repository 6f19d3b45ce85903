"""How a variant is trained from the trained float model: schedule, distillation, progressive.

A `Recipe` names every choice the accuracy table compares: where training
starts (the trained float model or a fresh initialization), the peak learning
rate relative to the float model's, the schedule, BatchNormalization
re-estimation, distillation from the float model and progressive
quantization (INQ: a growing share of each kernel on the codebook, the rest
float).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk import quantizers as quantizers_mod
from tfmot_discrete.tfk.weights import wrapper_weights

#: INQ's shares (Zhou et al. 2017): half of each kernel, then 75, 87.5 and 100 %.
INQ_SHARES = (0.5, 0.75, 0.875, 1.0)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one variant is trained.

    Attributes:
        start: `"float"` (the trained float model of the same seed) or
            `"scratch"` (a fresh initialization).
        lr_factor: Peak learning rate relative to the float model's.
        schedule: `"cosine"` (cosine decay to 0 over the run) or `"constant"`.
        warmup: Share of the steps with a linear warmup from 1 % of the peak
            (cosine schedule only).
        recalibrate: Re-estimate the BatchNormalization statistics at the end.
        distill: `(temperature, alpha)` of a `td.Distiller` with the float
            model as teacher, or None.
        progressive: Shares of each kernel put on the codebook at equal steps
            of the run (largest magnitudes first, then held), or None.
    """

    start: str = "float"
    lr_factor: float = 1.0
    schedule: str = "cosine"
    warmup: float = 0.0
    recalibrate: bool = True
    distill: tuple[float, float] | None = None
    progressive: tuple[float, ...] | None = None

    def describe(self) -> str:
        parts = ["from float" if self.start == "float" else "from scratch"]
        lr = f"{self.lr_factor:g}x lr"
        warm = self.warmup and self.schedule == "cosine"
        parts.append(f"{self.schedule} {lr}" + (f", warmup {self.warmup:.0%}" if warm else ""))
        if self.distill:
            parts.append(f"distilled (T {self.distill[0]:g}, alpha {self.distill[1]:g})")
        if self.progressive:
            parts.append("progressive " + "/".join(f"{100 * s:g}" for s in self.progressive) + " %")
        parts.append("BN re-estimated" if self.recalibrate else "no BN re-estimation")
        return ", ".join(parts)


#: Distillation settings compared (temperature, weight of the label loss).
DISTILL = (4.0, 0.5)
#: The float model's own recipe: from scratch, cosine decay (BatchNorm re-estimated too,
#: as every row is).
FLOAT = Recipe(start="scratch", warmup=0.0)
#: What every other variant does unless its row says otherwise.
DEFAULT = Recipe(warmup=0.1)


def learning_rate(peak: float, steps: int, recipe: Recipe):
    """The learning rate (schedule) of `recipe` over `steps` steps."""
    if recipe.schedule == "constant":
        return peak
    return td.finetune_schedule(peak, steps, warmup=recipe.warmup)


# --- progressive quantization ------------------------------------------------------------


@keras.utils.register_keras_serializable(package="benchmarks")
class MaskedQuantizer(quantizers_mod.CodebookQuantizer):
    """A codebook quantizer that projects only the entries whose mask is 1."""

    def build(self, tensor_shape, name, layer):
        weights = super().build(tensor_shape, name, layer)
        weights["mask"] = layer.add_weight(
            f"{name}_mask",
            shape=tensor_shape,
            initializer=keras.initializers.Zeros(),
            trainable=False,
        )
        return weights

    def __call__(self, inputs, training, weights, **kwargs):
        q = super().__call__(inputs, training, weights, **kwargs)
        m = tf.cast(weights["mask"], q.dtype)
        return m * q + (1.0 - m) * tf.cast(tf.convert_to_tensor(inputs), q.dtype)


def masked(spec):
    """`spec` (a quantizer or a mapping) with each codebook quantizer made a `MaskedQuantizer`."""
    if isinstance(spec, dict):
        return {k: masked(v) for k, v in spec.items()}
    if isinstance(spec, quantizers_mod.CodebookQuantizer):
        return MaskedQuantizer(**spec.get_config())
    return spec


class Progressive(keras.callbacks.Callback):
    """INQ on a model quantized with `masked(...)`: at equal steps of the run, the
    largest-magnitude `share` of each kernel goes on the codebook and is held
    there; the last share (100 %) keeps training like plain QAT."""

    def __init__(self, shares, total_steps: int, model=None):
        super().__init__()
        self.quantized = model
        self.shares = tuple(shares)
        self.every = max(1, int(np.ceil(total_steps / len(self.shares))))
        self.step = 0
        self.held = []

    def _kernels(self):
        # `model`: the quantized model itself when `fit` runs on a wrapper (a Distiller).
        for layer in (self.quantized or self.model).layers:
            for w, q, qvars in wrapper_weights(layer):
                if isinstance(q, MaskedQuantizer):
                    yield w, qvars["mask"]

    def _advance(self, share):
        self.held = []
        for w, mask_var in self._kernels():
            lat = w.numpy()
            if share >= 1.0:
                mask = np.ones(lat.shape, bool)
            else:
                mask = np.abs(lat) >= np.quantile(np.abs(lat), 1.0 - share)
                self.held.append((w, tf.constant(mask), tf.constant(lat)))
            mask_var.assign(mask.astype(np.float32))

    def on_train_batch_begin(self, batch, logs=None):
        stage, rest = divmod(self.step, self.every)
        if rest == 0 and stage < len(self.shares):
            self._advance(self.shares[stage])
        self.step += 1

    def on_train_batch_end(self, batch, logs=None):
        for w, mask, value in self.held:
            w.assign(tf.where(mask, value, w))


def recalibrate(model, x, batch: int) -> None:
    """Re-estimates every BatchNormalization with the model's current weights (one pass)."""
    td.recalibrate_batchnorm(model, x, batch_size=batch)


def ablations() -> list[tuple[str, Recipe]]:
    """`(what changes, recipe)`: one change of `DEFAULT` each."""
    change = dataclasses.replace
    toggled_distill = None if DEFAULT.distill else DISTILL
    toggled_progressive = None if DEFAULT.progressive else INQ_SHARES
    return [
        (
            "from scratch, constant lr (the earlier benchmark)",
            Recipe(start="scratch", schedule="constant"),
        ),
        ("from scratch", change(DEFAULT, start="scratch")),
        ("constant lr", change(DEFAULT, schedule="constant")),
        ("lr 0.3x", change(DEFAULT, lr_factor=0.3 * DEFAULT.lr_factor)),
        (
            "with distillation" if toggled_distill else "without distillation",
            change(DEFAULT, distill=toggled_distill),
        ),
        (
            "with progressive quantization" if toggled_progressive else "not progressive",
            change(DEFAULT, progressive=toggled_progressive),
        ),
    ]
