"""Accuracy: every variant on the same data, model, optimizer, epochs and data order.

Datasets: scikit-learn's digits (an MLP) and MNIST-1D (the paper's small CNN).
Each trained model is also exported to a TFLite file and evaluated with LiteRT
on the test set, so the table shows what reaches the device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from benchmarks import common, finetune
from tflite_export import exact, pipeline, runners
from tfmot_discrete import keras


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with its model and training recipe."""

    name: str
    title: str
    load: object
    arch: object
    lr: float
    batch: int


TASKS = {
    "digits": Task(
        "digits",
        "scikit-learn digits, MLP 64-256-256-10 (BatchNorm, ReLU)",
        common.digits,
        functools.partial(common.mlp, inputs=64, hidden=256),
        3e-3,
        64,
    ),
    "mnist1d": Task(
        "mnist1d",
        "MNIST-1D (make_dataset defaults), CNN 3 x conv(25 ch, k 5/3/3, stride 2) + linear "
        "(BatchNorm, ReLU)",
        common.mnist1d,
        common.mnist1d_cnn,
        1e-2,
        100,
    ),
}


#: Datasets that also run the 8-bit-edge and ablation rows (digits: every layer only).
EDGE_TASKS = ("mnist1d",)


@dataclasses.dataclass
class Record:
    """One trained model's results."""

    task: str
    variant: str
    seed: int
    accuracy: float
    export_accuracy: float | None
    export_format: str
    accuracy_before_recalibration: float | None = None


def train(model, data, epochs: int, task: Task, seed: int, recipe, teacher=None) -> keras.Model:
    """Adam on one pre-drawn stream of `epochs` shuffled passes (the same for every variant),
    with `recipe`'s learning rate, schedule, distillation and progressive quantization."""
    xtr, ytr = data[0], data[1]
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(xtr)) for _ in range(epochs)])
    steps = math.ceil(len(order) / task.batch)
    lr = finetune.learning_rate(task.lr * recipe.lr_factor, steps, recipe)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainee = model
    if recipe.distill:
        trainee = td.Distiller(model, teacher, *recipe.distill)
    callbacks = []
    if recipe.progressive:
        callbacks.append(finetune.Progressive(recipe.progressive, steps, model))
    trainee.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    trainee.fit(
        xtr[order],
        ytr[order],
        batch_size=task.batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    model.compile(loss=loss, metrics=["accuracy"])
    return model


def evaluate(model, data) -> float:
    _, acc = model.evaluate(data[2], data[3], batch_size=512, verbose=0)
    return float(acc)


def tflite_accuracy(model_bytes: bytes, data) -> float:
    return float(np.mean(np.argmax(runners.run_litert(model_bytes, [data[2]])[0], -1) == data[3]))


def deploy_format(variant: common.Variant) -> str:
    """The narrowest exact format for our codebooks; int8 weight-only for the others."""
    if variant.kind == "ours" and isinstance(variant.spec, dict) and None in variant.spec.values():
        # Float layers next to codebook ones: `export` holds every weight-only file to
        # the Keras outputs, which int4 or int8 float layers miss; convert unverified.
        return "int8, unverified"
    if variant.kind == "ours":
        return exact.smallest_exact_format(common.codebook_of(variant).codebook)
    if variant.kind == "tfmot_qat":
        return "TFLiteConverter"
    return "int8"


def to_tflite(model, variant: common.Variant, data, fmt: str) -> bytes:
    """Bytes of the deployed file (our `tflite_export`, or TF-MOT's own converter path)."""
    if fmt == "TFLiteConverter":
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return bytes(conv.convert())
    rep = data[0][:200]
    if fmt == "int8, unverified":
        return pipeline.convert_bytes(model, "int8", representative_data=rep).data
    if variant.kind != "ours":
        # Not a codebook model: `export` would hold int8 weights to the float outputs.
        return pipeline.convert_bytes(model, fmt, representative_data=rep).data
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        tflite_export.export(model, path, format=fmt, representative_data=rep)
        return path.read_bytes()


def _start(variant, task, seed, float_model, recipe) -> keras.Model:
    """The model a variant trains: built on a copy of the trained float model, or fresh."""
    if recipe.start == "scratch":
        return common.build(task.arch, variant, seed)
    if float_model is None:
        raise ValueError(
            f"{variant.name!r} starts from the trained float model: run 'float' first."
        )
    if variant.kind == "map":
        model = common.build(task.arch, variant, seed)
        model.set_weights(float_model.get_weights())
        return model
    start = keras.models.clone_model(float_model)
    start.set_weights(float_model.get_weights())
    if variant.kind == "cluster":
        return common.cluster(start, variant.spec, variant.keep)
    spec = variant.spec
    if variant.kind == "ours" and recipe.progressive:
        spec = finetune.masked(spec)
    return common.build(lambda: start, dataclasses.replace(variant, spec=spec), seed)


def train_variant(variant, task, data, epochs, seed, float_model):
    """Builds and trains one variant.

    Returns:
        `(trained model, model to evaluate and export, accuracy before BatchNorm
        re-estimation or None)`.
    """
    recipe = variant.recipe or finetune.DEFAULT
    model = _start(variant, task, seed, float_model, recipe)
    model = train(model, data, epochs, task, seed, recipe, teacher=float_model)
    final = model
    if variant.kind == "cluster":
        final = common.strip_cluster(model)
        final.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    before = None
    if recipe.recalibrate:
        before = evaluate(final, data)
        finetune.recalibrate(final, data[0], task.batch)
    return model, final, before


def run(settings: common.Settings, log=print) -> dict:
    """Trains every variant on every dataset and seed.

    Returns:
        `{"records": [Record], "models": {(task, variant): model of the first seed},
        "data": {task: data}, "epochs": {task: epochs}, "sizes": {task: (train, test)}}`.
    """
    variants = common.pick(common.accuracy_variants(), settings.variants)
    out = {"records": [], "models": {}, "data": {}, "epochs": {}, "sizes": {}}
    clock = common.Clock()
    for name in settings.datasets:
        task = TASKS[name]
        data = task.load()
        epochs = settings.digits_epochs if name == "digits" else settings.mnist1d_epochs
        out["data"][name], out["epochs"][name] = data, epochs
        out["sizes"][name] = (len(data[1]), len(data[3]))
        for seed in settings.seeds:
            float_model = None
            for v in variants:
                if v.group != common.EVERY and name not in EDGE_TASKS:
                    continue
                keras.backend.clear_session()
                trained, final, before = train_variant(v, task, data, epochs, seed, float_model)
                if v.recipe is finetune.FLOAT:
                    float_model = trained
                acc = evaluate(final, data)
                fmt = deploy_format(v)
                try:
                    exp_acc = tflite_accuracy(to_tflite(final, v, data, fmt), data)
                except Exception as e:  # noqa: BLE001 - recorded in the table
                    log(f"  export of {v.name} failed: {type(e).__name__}: {e}")
                    exp_acc = None
                out["records"].append(Record(name, v.name, seed, acc, exp_acc, fmt, before))
                if seed == settings.seeds[0]:
                    out["models"][(name, v.name)] = final
                exp = "-" if exp_acc is None else f"{100 * exp_acc:.2f}"
                log(f"[{clock}] {name} seed {seed} {v.name}: {100 * acc:.2f} % (file {exp})")
    return out


def records_by_variant(records, task: str) -> dict:
    """`{variant: [Record, ...]}` of one dataset, in the order they were trained."""
    by = {}
    for r in records:
        if r.task == task:
            by.setdefault(r.variant, []).append(r)
    return by


def _pts(x) -> str:
    return f"{100 * x:+.2f}"


def table(result: dict, task: str, group: str = common.EVERY) -> str:
    """The accuracy table of one dataset and row group (Markdown)."""
    variants = {v.name: v for v in common.accuracy_variants()}
    by = records_by_variant(result["records"], task)
    base = _mean(by, "float")
    base = math.nan if base is None else base
    rows = []
    for name, recs in by.items():
        v = variants[name]
        if v.group != group and not (name == "float" and group != common.ABLATION):
            continue
        acc = [r.accuracy for r in recs]
        exp = [r.export_accuracy for r in recs]
        pre = [r.accuracy_before_recalibration for r in recs]
        ok = all(e is not None for e in exp)
        diff = max(abs(a - e) for a, e in zip(acc, exp)) if ok else None
        recipe = v.recipe or finetune.DEFAULT
        common_cells = (
            common.fmt_pct(acc),
            _pts(common.mean_std(acc)[0] - base),
            common.fmt_pct(pre) if None not in pre else "-",
        )
        if group == common.ABLATION:
            ref = name.split(": ")[0]
            gain = _mean(by, ref)
            rows.append(
                (
                    name,
                    recipe.describe(),
                    *common_cells,
                    _pts(common.mean_std(acc)[0] - gain) if gain is not None else "-",
                )
            )
            continue
        rows.append(
            (
                name,
                v.values,
                v.bits,
                *common_cells,
                common.fmt_pct(exp) if ok else "failed",
                recs[0].export_format,
                f"{100 * diff:.2f}" if ok else "-",
            )
        )
    acc_headers = (
        "test accuracy % (Keras)",
        "vs float (points)",
        "before BatchNorm re-estimation %",
    )
    if group == common.ABLATION:
        headers = ("variant", "recipe", *acc_headers, "vs the same codebook's recipe row (points)")
    else:
        headers = (
            "variant",
            "values per layer",
            "bits/weight",
            *acc_headers,
            "test accuracy % (LiteRT, exported file)",
            "file format",
            "max Keras-file gap (points)",
        )
    return common.md_table(headers, rows)


def _mean(by, name):
    return common.mean_std([r.accuracy for r in by[name]])[0] if name in by else None


#: (dataset, row group, allowed loss in points, codebook rows); the issue's targets.
_GAP_TARGETS = (
    ("mnist1d", 0.5, common.EDGE_ROWS_TIGHT),
    ("mnist1d", 1.5, common.EDGE_ROWS_BINARY),
    ("mnist1d", 3.0, ("ternary, mean_abs", "[1, -1, 0.5, -0.5]", "[1, -1, 0.5, -0.5], mean_abs")),
    ("mnist1d", 10.0, ("binary, mean_abs", "binary, scale=None")),
    ("digits", 0.3, common.CODEBOOK_ROWS),
)


def targets(result: dict) -> list[tuple[str, str, str]]:
    """`(target, measured, "met" | "MISSED")` for each stated target that was run."""
    variants = {v.name: v for v in common.accuracy_variants()}
    out = []
    for task, limit, names in _GAP_TARGETS:
        by = records_by_variant(result["records"], task)
        base = _mean(by, "float")
        for name in names:
            acc = _mean(by, name)
            if base is None or acc is None:
                continue
            gap = 100 * (base - acc)
            out.append(
                (
                    f"{task}: {name} >= float - {limit} points",
                    f"{-gap:+.2f} points vs float",
                    "met" if gap <= limit else "MISSED",
                )
            )
    for task in result["data"]:
        by = records_by_variant(result["records"], task)
        for name in by:
            v = variants[name]
            if v.kind != "ours" or v.group == common.ABLATION:
                continue
            k = common.codebook_of(v).codebook.size
            peer = f"TF-MOT clustering, {k} clusters"
            peer += common.EDGE_CLUSTER_SUFFIX if v.group == common.EDGE else ""
            ours, theirs = _mean(by, name), _mean(by, peer)
            if ours is None or theirs is None or k > 4:
                continue
            out.append(
                (
                    f"{task}: {name} >= clustering with {k} clusters",
                    f"{100 * ours:.2f} vs {100 * theirs:.2f}",
                    "met" if ours >= theirs else "MISSED",
                )
            )
        gaps = [
            abs(r.accuracy - r.export_accuracy)
            for r in result["records"]
            if r.task == task
            and r.export_accuracy is not None
            and variants[r.variant].kind == "ours"
        ]
        if gaps:
            one_sample = 1 / result["sizes"][task][1]
            out.append(
                (
                    f"{task}: our exported files score what the Keras models score",
                    f"max gap {100 * max(gaps):.2f} points",
                    "met" if max(gaps) < one_sample / 2 else "MISSED",
                )
            )
    return out


# --- the Markdown section, and regenerating it alone ------------------------------------

_GROUP_TITLES = {
    common.EDGE: "First and last layer at 8 bits (the rest on the codebook)",
    common.EVERY: "Every layer on the codebook, and the peers",
    common.ABLATION: "Ablation: one change of the recipe at a time",
}


def recipe_text(task: Task, epochs: int) -> str:
    """The float and fine-tuning recipe of one dataset, in words."""
    d = finetune.DEFAULT
    warm = f", {d.warmup:.0%} linear warmup" if d.warmup else ""
    dist = (
        f"; trained on the float model's outputs (temperature {d.distill[0]:g}, label weight "
        f"{d.distill[1]:g})"
        if d.distill
        else ""
    )
    prog = " with progressive quantization" if d.progressive else ""
    return (
        f"Float: Adam (peak lr {task.lr:g}, cosine decay to 0), batch {task.batch}, {epochs} "
        f"epochs from a fresh initialization. Every other row starts from that trained float "
        f"model (same seed) and trains {epochs} more epochs{prog}: Adam, peak lr "
        f"{d.lr_factor:g}x the float one ({task.lr * d.lr_factor:g}), cosine decay{warm}{dist}. "
        "Every row, float included, ends with `td.recalibrate_batchnorm` on the training "
        "inputs (one pass); the column before it shows the accuracy without. Clustering: "
        "TF-MOT `cluster_weights` (k-means++), the same fine-tuning, then `strip_clustering`; "
        "Larq-style layers and TF-MOT 8-bit QAT start from the float weights too."
    )


def section(result: dict, seeds, env: str, out: pathlib.Path) -> list[str]:
    """The `## Accuracy` section (Markdown lines); writes its plots into `out`."""
    from benchmarks import plots  # noqa: PLC0415

    seeds = ", ".join(str(s) for s in seeds)
    doc = ["## Accuracy", ""]
    for name, sizes in result["sizes"].items():
        task = TASKS[name]
        doc += [
            f"### {task.title}",
            "",
            f"{sizes[0]} training / {sizes[1]} test samples; seeds {seeds} (mean ± standard "
            "deviation over seeds); the same pre-drawn data order for every variant. "
            + recipe_text(task, result["epochs"][name])
            + " Exported files: our codebooks in their narrowest exact format (verified by "
            "`tflite_export.export`), the others as int8 weight-only, TF-MOT QAT through "
            "`TFLiteConverter` with `Optimize.DEFAULT`; all evaluated with LiteRT. "
            f"Environment: {env}.",
            "",
        ]
        for group in (common.EDGE, common.EVERY, common.ABLATION):
            if group != common.EVERY and name not in EDGE_TASKS:
                continue
            rows = table(result, name, group)
            if len(rows.splitlines()) > 3 or group == common.EVERY:
                doc += [f"#### {_GROUP_TITLES[group]}", "", rows, ""]
    png = plots.accuracy_vs_bits(result, out / "accuracy_vs_bits.png")
    doc += [f"![accuracy against bits per weight]({png.name})", ""]
    if result.get("models"):
        hist = plots.latent_histograms(result, out / "latent_histograms.png")
        if hist is not None:
            doc += [f"![latent weights of trained layers]({hist.name})", ""]
    elif (out / "latent_histograms.png").exists():
        doc += ["![latent weights of trained layers](latent_histograms.png)", ""]
    return doc


def save(result: dict, path: pathlib.Path) -> None:
    """The records of a run as JSON (to merge runs of different seeds)."""
    payload = {
        "records": [dataclasses.asdict(r) for r in result["records"]],
        "epochs": result["epochs"],
        "sizes": result["sizes"],
    }
    path.write_text(json.dumps(payload, indent=1))


def load(paths) -> dict:
    """Runs saved by `save`, merged (records concatenated in seed order)."""
    out = {"records": [], "models": {}, "epochs": {}, "sizes": {}, "data": {}}
    for p in paths:
        d = json.loads(pathlib.Path(p).read_text())
        out["records"] += [Record(**r) for r in d["records"]]
        out["epochs"].update(d["epochs"])
        out["sizes"].update({k: tuple(v) for k, v in d["sizes"].items()})
    out["records"].sort(key=lambda r: r.seed)
    out["data"] = dict.fromkeys(out["sizes"])
    return out


def _is_accuracy_target(row: str) -> bool:
    return row.startswith(tuple(f"| {t}:" for t in TASKS))


def splice(text: str, section_lines: list[str], target_rows) -> str:
    """`text` (a RESULTS.md) with its `## Accuracy` section and accuracy target rows replaced."""
    lines = text.splitlines()
    start = lines.index("## Accuracy")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    lines[start:end] = section_lines
    new_rows = [common.md_table(("target", "measured", "result"), target_rows).splitlines()[2:]]
    if "## Targets" in lines:
        t = lines.index("## Targets")
        head = next(i for i in range(t, len(lines)) if lines[i].startswith("| target"))
        rows = [i for i in range(head + 2, len(lines)) if lines[i].startswith("|")]
        rows = rows[: next((k for k, i in enumerate(rows) if i != rows[0] + k), len(rows))]
        kept = [lines[i] for i in rows if not _is_accuracy_target(lines[i])]
        lines[head + 2 : head + 2 + len(rows)] = new_rows[0] + kept
    return "\n".join(lines) + "\n"


def _main(argv=None) -> int:
    """`python -m benchmarks.accuracy [--seeds 0 1] [--datasets mnist1d] [--save run.json]
    [--merge a.json ...] [--results RESULTS.md]`: the accuracy part alone, or merged runs."""
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=_main.__doc__)
    p.add_argument("--settings", choices=tuple(common.SETTINGS), default="full")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the settings')")
    p.add_argument("--datasets", choices=tuple(TASKS), nargs="+", help="default: the settings'")
    p.add_argument("--save", type=pathlib.Path, help="write this run's records as JSON")
    p.add_argument("--merge", type=pathlib.Path, nargs="+", help="saved runs to merge")
    p.add_argument(
        "--results",
        type=pathlib.Path,
        help="RESULTS.md whose accuracy section and targets are replaced",
    )
    args = p.parse_args(argv)
    env = common.environment_line()
    if args.merge:
        result = load(args.merge)
    else:
        settings = common.SETTINGS[args.settings]
        if args.seeds:
            settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
        if args.datasets:
            settings = dataclasses.replace(settings, datasets=tuple(args.datasets))
        result = run(settings, lambda m: print(m, flush=True))
        if args.save:
            save(result, args.save)
    if args.results:
        seeds = sorted({r.seed for r in result["records"]})
        lines = section(result, seeds, env, args.results.parent)
        text = splice(args.results.read_text(), lines, targets(result))
        args.results.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
