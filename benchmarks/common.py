"""What every benchmark shares: run settings, data, models, peer layers, tables."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
import time

import numpy as np
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete import keras


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long each benchmark runs.

    Attributes:
        name: `"full"`, `"quick"` or `"smoke"`.
        seeds: Seeds of the accuracy runs (mean and standard deviation over them).
        digits_epochs: Passes over the digits training set.
        mnist1d_epochs: Passes over the MNIST-1D training set.
        datasets: Which accuracy datasets run.
        variants: Names of the accuracy variants to run (None: all).
        mlp_widths: Hidden widths of the speed MLP.
        cnn_widths: Channel widths of the speed CNN.
        speed_variants: Names of the speed variants to run (None: all).
        speed_rounds: Interleaved rounds of the train-step timing.
        speed_block: Train steps per variant and round.
        projection_ks: Codebook sizes of the projection-alone benchmark.
        projection_repeats: Timed calls per codebook size.
        latency_rounds: Interleaved rounds of the LiteRT latency timing.
        export_variants: Names of the accuracy variants whose files are measured.
        packed_models: Names of the `tflm_packed` size-target models
            (`benchmarks.export.PACKED_MODELS`).
        packed_epochs: Training passes of the size-target MLPs (a third of
            them, at least one, for MobileNetV2).
        projection_rows: `(method, compile mode)` rows of the projection
            benchmark (None: all of `benchmarks.speed.PROJECTION_ROWS`).
    """

    name: str
    seeds: tuple[int, ...]
    digits_epochs: int
    mnist1d_epochs: int
    datasets: tuple[str, ...]
    variants: tuple[str, ...] | None
    mlp_widths: tuple[int, ...]
    cnn_widths: tuple[int, ...]
    speed_variants: tuple[str, ...] | None
    speed_rounds: int
    speed_block: int
    projection_ks: tuple[int, ...]
    projection_repeats: int
    latency_rounds: int
    export_variants: tuple[str, ...] | None
    packed_models: tuple[str, ...] = (
        "binary (mean_abs) MLP 64-512-512-10",
        "ternary MLP 64-512-512-10",
        "power_of_two(3) (mean_abs) MLP 64-512-512-10",
        "ternary MobileNetV2 alpha 0.35 (weights=None), 32x32x3",
    )
    packed_epochs: int = 6
    projection_rows: tuple[tuple[str, str], ...] | None = None


_SMALL_SET = (
    "float",
    "binary, mean_abs",
    "[1, -1, 0.5, -0.5]",
    "TF-MOT clustering, 2 clusters",
)

#: The full run's accuracy rows (the others cost time and add little: the seed answers,
#: binary learned, power of two).
_FULL_SET = (
    "float",
    "binary, mean_abs, first and last layer 8-bit",
    "ternary, mean_abs, first and last layer 8-bit",
    "[1, -1, 0.5, -0.5], first and last layer 8-bit",
    "[1, -1, 0.5, -0.5], mean_abs, first and last layer 8-bit",
    "TF-MOT clustering, 2 clusters, first and last layer not clustered",
    "TF-MOT clustering, 3 clusters, first and last layer not clustered",
    "TF-MOT clustering, 4 clusters, first and last layer not clustered",
    "float, fine-tuned like the others",
    "binary, scale=None",
    "binary, mean_abs",
    "ternary, mean_abs",
    "[1, -1, 0.5, -0.5]",
    "[1, -1, 0.5, -0.5], mean_abs",
    "Larq-style ste_sign",
    "Larq-style magnitude_aware_sign",
    "TF-MOT clustering, 2 clusters",
    "TF-MOT clustering, 3 clusters",
    "TF-MOT clustering, 4 clusters",
    "TF-MOT 8-bit QAT",
    "ternary, mean_abs: from scratch, constant lr (the earlier benchmark)",
    "ternary, mean_abs: from scratch",
    "ternary, mean_abs: constant lr",
    "ternary, mean_abs: lr 0.3x",
    "ternary, mean_abs: with distillation",
    "ternary, mean_abs: with progressive quantization",
)

SETTINGS = {
    "full": Settings(
        name="full",
        seeds=(0, 1, 2),
        digits_epochs=30,
        mnist1d_epochs=30,
        datasets=("digits", "mnist1d"),
        variants=_FULL_SET,
        mlp_widths=(256, 1024, 2048),
        cnn_widths=(16, 32, 64),
        speed_variants=None,
        speed_rounds=16,
        speed_block=3,
        projection_ks=(2, 4, 16, 256),
        projection_repeats=30,
        latency_rounds=100,
        export_variants=None,
    ),
    "quick": Settings(
        name="quick",
        seeds=(0,),
        digits_epochs=10,
        mnist1d_epochs=10,
        datasets=("digits", "mnist1d"),
        variants=None,
        mlp_widths=(1024,),
        cnn_widths=(32,),
        speed_variants=None,
        speed_rounds=10,
        speed_block=3,
        projection_ks=(2, 4, 16, 256),
        projection_repeats=10,
        latency_rounds=30,
        export_variants=("float", "binary, mean_abs", "[1, -1, 0.5, -0.5]", "TF-MOT 8-bit QAT"),
    ),
    "smoke": Settings(
        name="smoke",
        seeds=(0,),
        digits_epochs=2,
        mnist1d_epochs=1,
        datasets=("digits",),
        variants=_SMALL_SET,
        mlp_widths=(128,),
        cnn_widths=(8,),
        speed_variants=("float", "binary, mean_abs"),
        speed_rounds=3,
        speed_block=2,
        projection_ks=(2,),
        projection_repeats=3,
        latency_rounds=5,
        export_variants=("float", "binary, mean_abs"),
        packed_models=("binary (mean_abs) MLP 64-512-512-10",),
        packed_epochs=1,
        projection_rows=(("ours", "default"), ("ours", "jit")),
    ),
}


# --- the environment every table states ------------------------------------------------

_PACKAGES = ("tensorflow", "tf_keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy")


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["tfmot_discrete"] = td.__version__
    return out


def environment_line() -> str:
    """One line: versions, Python, machine, cores."""
    pkgs = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (
        f"{pkgs}; Python {platform.python_version()}; {platform.machine()} "
        f"{platform.system()}, {os.cpu_count()} cores"
    )


# --- Markdown tables -------------------------------------------------------------------


def md_table(headers, rows) -> str:
    """A Markdown table; every cell is turned into a string."""
    headers = [str(h) for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(headers):
            raise ValueError(f"Row has {len(cells)} cells, the table {len(headers)}: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt_pct(values) -> str:
    """`mean ± std` of accuracies given as fractions, in percent."""
    m, s = mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f}"


class Clock:
    """Wall time since construction, for the log."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.t0:6.0f} s"


# --- data ------------------------------------------------------------------------------


def digits():
    """scikit-learn's 8x8 digits, the fixed split of `tfmot_discrete_demo.digits` (seed 0)."""
    from tfmot_discrete_demo.digits import load_digits_split  # noqa: PLC0415

    return load_digits_split(0)


def mnist1d():
    """MNIST-1D from `mnist1d.data.make_dataset` with its default arguments (offline).

    Returns (x_train, y_train, x_test, y_test); signals have shape `(1, 40, 1)`
    so the 1-D convolutions run as `Conv2D` with `(1, k)` kernels.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # noqa: PLC0415

    d = make_dataset(get_dataset_args())

    def shape(x):
        return x.astype("float32")[:, None, :, None]

    return shape(d["x"]), d["y"].astype("int32"), shape(d["x_test"]), d["y_test"].astype("int32")


# --- models ----------------------------------------------------------------------------


def _plain_dense(units, name):
    return keras.layers.Dense(units, name=name)


def _plain_conv(filters, kernel, strides, name):
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)


def _hidden(x, layer, i, batch_norm):
    x = layer(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
    return keras.layers.ReLU(name=f"relu_{i}")(x)


def mlp(inputs=64, hidden=256, dense=None, conv=None, batch_norm=True, name="mlp") -> keras.Model:
    """`inputs -> hidden -> hidden -> 10`, ReLU, BatchNormalization optional (`conv` unused)."""
    dense = dense or _plain_dense
    inp = keras.Input((inputs,), name="x")
    x = inp
    for i in range(2):
        x = _hidden(x, dense(hidden, f"dense_{i}"), i, batch_norm)
    return keras.Model(inp, dense(10, "logits")(x), name=name)


def mnist1d_cnn(channels=25, dense=None, conv=None, batch_norm=True) -> keras.Model:
    """The MNIST-1D paper's CNN: three convolutions (k = 5, 3, 3; stride 2) and a linear layer.

    Written with `Conv2D` and `(1, k)` kernels over a `(1, 40, 1)` input, which
    computes the same as `Conv1D` and which TF-MOT's 8-bit QAT supports.
    """
    dense, conv = dense or _plain_dense, conv or _plain_conv
    inp = keras.Input((1, 40, 1), name="signal")
    x = inp
    for i, k in enumerate((5, 3, 3)):
        x = _hidden(x, conv(channels, (1, k), (1, 2), f"conv_{i}"), i, batch_norm)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inp, dense(10, "logits")(x), name="mnist1d_cnn")


def image_cnn(width=32, dense=None, conv=None, batch_norm=False) -> keras.Model:
    """A small image CNN for timing: three 3x3 stride-2 convolutions on 32x32x3."""
    dense, conv = dense or _plain_dense, conv or _plain_conv
    inp = keras.Input((32, 32, 3), name="image")
    x = inp
    for i in range(3):
        x = _hidden(x, conv(width, (3, 3), (2, 2), f"conv_{i}"), i, batch_norm)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inp, dense(10, "logits")(x), name="image_cnn")


# --- the usual answer and Larq-style layers --------------------------------------------

SEED_GATHER_VALUES = (1.0, -1.0, 0.5, -0.5)


def seed_gather(kernel):
    """The usual answer's list lookup: index `(sign + 1) / 2` reaches only two values."""
    idx = tf.cast((tf.math.sign(kernel) + 1.0) / 2.0, tf.int32)
    return tf.gather(tf.constant(SEED_GATHER_VALUES, kernel.dtype), idx)


@tf.custom_gradient
def ste_sign(x):
    """Larq's `ste_sign`: `+1` for `x >= 0`, else `-1`; gradient `1` where `|x| <= 1`."""

    def grad(dy):
        return dy * tf.cast(tf.abs(x) <= 1.0, dy.dtype)

    return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x)), grad


def magnitude_aware_sign(x):
    """Larq's `magnitude_aware_sign`: `ste_sign(x)` times the constant `mean|x|` per output."""
    axes = list(range(x.shape.rank - 1))
    return tf.stop_gradient(tf.reduce_mean(tf.abs(x), axis=axes)) * ste_sign(x)


KERNEL_MAPS = {
    "sign": tf.math.sign,
    "gather": seed_gather,
    "ste_sign": ste_sign,
    "magnitude_aware_sign": magnitude_aware_sign,
}
#: Larq pairs its sign estimators with `weight_clip(1)`.
_CLIPPED = ("ste_sign", "magnitude_aware_sign")


def _clip_one(w):
    return tf.clip_by_value(w, -1.0, 1.0)


class MappedDense(keras.layers.Dense):
    """`Dense` whose kernel goes through `KERNEL_MAPS[kernel_map]` on every call."""

    def __init__(self, units, kernel_map="sign", **kwargs):
        if kernel_map in _CLIPPED:
            kwargs.setdefault("kernel_constraint", _clip_one)
        super().__init__(units, **kwargs)
        self.kernel_map = kernel_map

    def call(self, inputs):
        out = tf.matmul(inputs, KERNEL_MAPS[self.kernel_map](self.kernel))
        if self.use_bias:
            out = out + self.bias
        return self.activation(out)

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("kernel_constraint", None)
        return {**cfg, "kernel_map": self.kernel_map}


class MappedConv2D(keras.layers.Conv2D):
    """`Conv2D` whose kernel goes through `KERNEL_MAPS[kernel_map]` on every call."""

    def __init__(self, filters, kernel_size, kernel_map="sign", **kwargs):
        if kernel_map in _CLIPPED:
            kwargs.setdefault("kernel_constraint", _clip_one)
        super().__init__(filters, kernel_size, **kwargs)
        self.kernel_map = kernel_map

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, KERNEL_MAPS[self.kernel_map](kernel))

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("kernel_constraint", None)
        return {**cfg, "kernel_map": self.kernel_map}


def mapped_layers(kernel_map):
    """`(dense, conv)` factories building `MappedDense` / `MappedConv2D`."""

    def dense(units, name):
        return MappedDense(units, kernel_map=kernel_map, name=name)

    def conv(filters, kernel, strides, name):
        return MappedConv2D(
            filters, kernel, kernel_map=kernel_map, strides=strides, padding="same", name=name
        )

    return dense, conv


# --- variants --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of training the same architecture.

    Attributes:
        name: Row label.
        kind: `"float"`, `"map"` (a `KERNEL_MAPS` layer), `"ours"`, `"cluster"`
            or `"tfmot_qat"`.
        spec: The kernel-map name, the `CodebookQuantizer` (or a mapping of
            layer names to quantizers), or the cluster count.
        bits: Bits per weight the trained values need, `ceil(log2 K)` (32 for float).
        values: How many distinct values per layer the variant can use.
        recipe: How it is trained (`finetune.Recipe`); None for the default.
        group: Table section: `"8-bit first and last layer"`, `"every layer"`
            or `"ablation"`.
        keep: Layer-name regex kept off the codebook (clustering: not clustered).
    """

    name: str
    kind: str
    spec: object = None
    bits: int = 32
    values: str = "any"
    recipe: object = None
    group: str = "every layer"
    keep: str | None = None


def build(arch, variant: Variant, seed: int) -> keras.Model:
    """`arch` (a function taking `dense` and `conv` factories) built for `variant`.

    Clustering starts from a float model, so for `"cluster"` this returns the
    float model; `cluster` wraps it.
    """
    import tensorflow_model_optimization as tfmot  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    if variant.kind == "map":
        dense, conv = mapped_layers(variant.spec)
        return arch(dense=dense, conv=conv)
    model = arch()
    if variant.kind == "ours":
        return td.quantize_model(model, variant.spec)
    if variant.kind == "tfmot_qat":
        return tfmot.quantization.keras.quantize_model(model)
    return model


def cluster(model, clusters: int, keep: str | None = None) -> keras.Model:
    """TF-MOT `cluster_weights` with k-means++ centroids on every supported layer,
    except those whose name matches the regex `keep` (left float)."""
    import tensorflow_model_optimization as tfmot  # noqa: PLC0415

    ck = tfmot.clustering.keras
    kwargs = dict(
        number_of_clusters=clusters,
        cluster_centroids_init=ck.CentroidInitialization.KMEANS_PLUS_PLUS,
    )
    if keep is None:
        return ck.cluster_weights(model, **kwargs)

    def _one(layer):
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and not re.fullmatch(
            keep, layer.name
        ):
            return ck.cluster_weights(layer, **kwargs)
        return layer  # shared with `model`, trained weights included

    return keras.models.clone_model(model, clone_function=_one)


def strip_cluster(model) -> keras.Model:
    import tensorflow_model_optimization as tfmot  # noqa: PLC0415

    return tfmot.clustering.keras.strip_clustering(model)


#: First and last layer of each accuracy model (kept at 8 bits in the first table).
EDGE_LAYERS = "conv_0|dense_0|logits"
EDGE = "8-bit first and last layer"
#: The row the ablation varies, one change of the recipe at a time.
ABLATION_BASE = "ternary, mean_abs"
EVERY = "every layer"
ABLATION = "ablation"


EDGE_SUFFIX = ", first and last layer 8-bit"
EDGE_CLUSTER_SUFFIX = ", first and last layer not clustered"
EDGE_ROWS_TIGHT = tuple(
    n + EDGE_SUFFIX
    for n in ("ternary, mean_abs", "[1, -1, 0.5, -0.5]", "[1, -1, 0.5, -0.5], mean_abs")
)
EDGE_ROWS_BINARY = ("binary, mean_abs" + EDGE_SUFFIX,)
CODEBOOK_ROWS = (
    "binary, scale=None",
    "binary, mean_abs",
    "binary, learned",
    "ternary, mean_abs",
    "[1, -1, 0.5, -0.5]",
    "[1, -1, 0.5, -0.5], mean_abs",
    "power_of_two(bits=3)",
)


def _edge(q):
    return {EDGE_LAYERS: "int8", ".*": q}


def accuracy_variants() -> list[Variant]:
    """Every accuracy row, ours and peers, in table order.

    All but float start from the trained float model of the same seed and
    train with the same budget (`finetune.DEFAULT`) unless their recipe says
    otherwise; the ablation rows change one thing of that recipe each.
    """
    from benchmarks import finetune as ft  # noqa: PLC0415

    four = [1, -1, 0.5, -0.5]
    q4 = td.CodebookQuantizer(four)
    q4m = td.CodebookQuantizer(four, scale="mean_abs")
    bm = td.binary(scale="mean_abs")
    e8, ef = EDGE_SUFFIX, EDGE_CLUSTER_SUFFIX
    rows = [
        Variant("float", "float", recipe=ft.FLOAT),
        # First conv / first dense and the logits layer at 8 bits.
        Variant("binary, mean_abs" + e8, "ours", _edge(bm), 1, "2 x scale", group=EDGE),
        Variant("ternary, mean_abs" + e8, "ours", _edge(td.ternary()), 2, "3 x scale", group=EDGE),
        Variant("[1, -1, 0.5, -0.5]" + e8, "ours", _edge(q4), 2, "4", group=EDGE),
        Variant(
            "[1, -1, 0.5, -0.5], mean_abs" + e8, "ours", _edge(q4m), 2, "4 x scale", group=EDGE
        ),
    ]
    rows += [
        Variant(
            f"TF-MOT clustering, {k} clusters" + ef,
            "cluster",
            k,
            b,
            str(k),
            group=EDGE,
            keep=EDGE_LAYERS,
        )
        for k, b in ((2, 1), (3, 2), (4, 2))
    ]
    rows += [
        Variant("float, fine-tuned like the others", "float", recipe=ft.DEFAULT),
        Variant("seed answer: tf.math.sign", "map", "sign", 1, "2 (+0)"),
        Variant("seed answer: tf.gather [1, -1, 0.5, -0.5]", "map", "gather", 1, "2 of 4"),
        Variant("binary, scale=None", "ours", td.binary(), 1, "2"),
        Variant("binary, mean_abs", "ours", bm, 1, "2 x scale"),
        Variant("binary, learned", "ours", td.binary(scale="learned"), 1, "2 x scale"),
        Variant("ternary, mean_abs", "ours", td.ternary(), 2, "3 x scale"),
        Variant("[1, -1, 0.5, -0.5]", "ours", q4, 2, "4"),
        Variant("[1, -1, 0.5, -0.5], mean_abs", "ours", q4m, 2, "4 x scale"),
        Variant("power_of_two(bits=3)", "ours", td.power_of_two(bits=3), 3, "8"),
        Variant("Larq-style ste_sign", "map", "ste_sign", 1, "2"),
        Variant("Larq-style magnitude_aware_sign", "map", "magnitude_aware_sign", 1, "2 x scale"),
        Variant("TF-MOT clustering, 2 clusters", "cluster", 2, 1, "2"),
        Variant("TF-MOT clustering, 3 clusters", "cluster", 3, 2, "3"),
        Variant("TF-MOT clustering, 4 clusters", "cluster", 4, 2, "4"),
        Variant("TF-MOT 8-bit QAT", "tfmot_qat", None, 8, "256 x scale"),
    ]
    for what, recipe in ft.ablations():
        rows.append(
            Variant(
                f"{ABLATION_BASE}: {what}", "ours", td.ternary(), 2, "3 x scale", recipe, ABLATION
            )
        )
    return rows


def codebook_of(variant: Variant):
    """The main quantizer of one of our variants (the catch-all entry of a mapping)."""
    return variant.spec[".*"] if isinstance(variant.spec, dict) else variant.spec


def pick(variants, names):
    """The variants named in `names` (all when `names` is None), in table order."""
    if names is None:
        return list(variants)
    known = {v.name for v in variants}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"Unknown variant names: {missing}")
    return [v for v in variants if v.name in names]
