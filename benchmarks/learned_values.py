"""Fixed against learned codebook values (`learn_values=True`), every layer on
the codebook, from the trained float model.

    python -m benchmarks.learned_values [--tasks mnist1d digits] [--seeds 0 1 2]
        [--epochs N] [--speed-only | --no-speed] [--codebooks ternary binary ...]
        [--values fixed learned] [--scale mean_abs | learned] [--finetune-epochs N]
        [--lr-factor F] [--distill [T ALPHA]] [--layer NAME=SPEC ...]

Accuracy: for each dataset and seed, the float model of `benchmarks.accuracy`
is trained, then each codebook (ternary, binary and `[1, -1, 0.5, -0.5]`, each
times a `mean_abs` scale) is fine-tuned from it with the benchmark's recipe
(`finetune.DEFAULT`, BatchNorm re-estimated), with fixed and with learned
values; each model is exported to an `int8` file and scored with LiteRT.
The recipe options change the fine-tuning only: `--finetune-epochs` (default
`--epochs`), `--lr-factor` (peak learning rate relative to the float model's),
`--distill` (a `td.Distiller` with the float model as teacher, temperature and
alpha `finetune.DISTILL` unless given) and `--scale` (of every codebook).
`--layer NAME=SPEC` puts one layer on something else than the codebook of the
row: `float`, `int8`, or values separated by commas (times the row's scale),
to find which layer the loss comes from (the rows keep their names).
Speed: the train step of the 64-1024-1024-10 MLP (batch 256, one TensorFlow
thread, rounds interleaved), learned values against the same codebook fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import tempfile
import time

import numpy as np

import tflite_export
import tfmot_discrete as td
from benchmarks import accuracy, common, finetune
from tfmot_discrete import keras

FOUR = [1, -1, 0.5, -0.5]


def codebooks(learn: bool, scale: str = "mean_abs") -> dict:
    """The codebooks of the comparison, with fixed or learned values."""
    return {
        "ternary": td.ternary(scale=scale, learn_values=learn),
        "binary": td.binary(scale=scale, learn_values=learn),
        "[1, -1, 0.5, -0.5]": td.CodebookQuantizer(FOUR, scale=scale, learn_values=learn),
    }


def layer_spec(text: str) -> tuple[str, object]:
    """`NAME=SPEC` of `--layer`: `(name, None | "int8" | list of values)`."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(
            f"--layer takes NAME=SPEC (SPEC: float, int8 or values separated by commas). "
            f"Received: {text!r}"
        )
    if spec in ("float", "int8"):
        return name, None if spec == "float" else "int8"
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layer {name}=: SPEC must be float, int8 or numbers separated by commas. "
            f"Received: {spec!r}"
        ) from None
    return name, values


def with_layers(q, model, layers: dict, scale: str = "mean_abs"):
    """`q` for every layer of `model` but those of `layers` (`layer_spec`'s
    values by name): the mapping `td.quantize_model` takes, or `q` itself."""
    if not layers:
        return q
    unknown = sorted(set(layers) - {layer.name for layer in model.layers})
    if unknown:
        raise ValueError(
            f"--layer names layers the model does not have: {unknown}. "
            f"Its layers: {[layer.name for layer in model.layers]}"
        )
    mapping = {}
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.BatchNormalization):
            continue
        spec = layers.get(layer.name, q)
        if isinstance(spec, list):
            spec = td.CodebookQuantizer(spec, scale=scale)
        mapping[layer.name] = spec
    return mapping


def _float_model(task, data, epochs, seed):
    model = common.build(task.arch, common.Variant("float", "float"), seed)
    return accuracy.train(model, data, epochs, task, seed, finetune.FLOAT)


def _fine_tune(float_model, q, task, data, epochs, seed, recipe):
    start = keras.models.clone_model(float_model)
    start.set_weights(float_model.get_weights())
    keras.utils.set_random_seed(seed)
    qat = td.quantize_model(start, q)
    qat = accuracy.train(qat, data, epochs, task, seed, recipe, teacher=float_model)
    finetune.recalibrate(qat, data[0], task.batch)
    return qat


def _file_accuracy(qat, data) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "m.tflite"
        report = tflite_export.export(qat, path, format="int8", representative_data=data[0][:200])
        assert report.ok and report.exact, report
        return accuracy.tflite_accuracy(path.read_bytes(), data)


def run_accuracy(
    tasks,
    seeds,
    epochs,
    log=print,
    names=None,
    values=("fixed", "learned"),
    scale="mean_abs",
    finetune_epochs=0,
    recipe=finetune.DEFAULT,
    layers=None,
) -> dict:
    """`{(task, codebook, "fixed" | "learned" | "float"): [(keras, file) accuracy per seed]}`
    for the codebooks in `names` (None: all), fine-tuned with `recipe`; the
    layers of `layers` (`{name: layer_spec value}`) on what it says instead."""
    out: dict = {}
    for name in tasks:
        task = accuracy.TASKS[name]
        data = task.load()
        n = epochs or {"digits": 30, "mnist1d": 30}[name]
        if layers:  # names checked before anything trains
            with_layers(None, common.build(task.arch, common.Variant("float", "float"), 0), layers)
        for seed in seeds:
            start = time.perf_counter()
            fm = _float_model(task, data, n, seed)
            out.setdefault((name, "float", "float"), []).append((accuracy.evaluate(fm, data), None))
            for kind in values:
                for cb, q in codebooks(kind == "learned", scale).items():
                    if names and cb not in names:
                        continue
                    t0 = time.perf_counter()
                    q = with_layers(q, fm, layers or {}, scale)
                    qat = _fine_tune(fm, q, task, data, finetune_epochs or n, seed, recipe)
                    acc = accuracy.evaluate(qat, data)
                    file_acc = _file_accuracy(qat, data)
                    key = (name, cb, kind)
                    out.setdefault(key, []).append((acc, file_acc))
                    log(
                        f"{name} seed {seed} {cb} {kind}: {acc:.4f} (file {file_acc:.4f}), "
                        f"float {out[(name, 'float', 'float')][-1][0]:.4f}, "
                        f"{time.perf_counter() - t0:.0f} s"
                    )
            log(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s")
    return out


def accuracy_table(result: dict, layers=None) -> str:
    """The accuracy rows; `layers`: the `--layer` names, left off the codebook."""
    rows = []
    for (task, cb, kind), runs in result.items():
        if kind == "float":
            continue
        keras_acc = [100 * a for a, _ in runs]
        files = [100 * f for _, f in runs]
        base = [100 * a for a, _ in result[(task, "float", "float")]]
        delta = np.mean(keras_acc) - np.mean(base)
        rows.append(
            [
                task,
                cb,
                kind,
                common.fmt_pct(np.array(keras_acc) / 100),
                f"{delta:+.2f}",
                common.fmt_pct(np.array(files) / 100),
            ]
        )
    floats = {t: [a for a, _ in r] for (t, _, k), r in result.items() if k == "float"}
    head = "; ".join(f"float {t}: {common.fmt_pct(v)}" for t, v in floats.items())
    table = common.md_table(
        [
            "dataset",
            f"codebook (every layer{_but(layers)})",
            "values",
            "test accuracy %",
            "vs float",
            "int8 file",
        ],
        rows,
    )
    return f"{head}\n\n{table}"


def _mlp_step(q, x, y):
    model = common.mlp(inputs=64, hidden=1024, batch_norm=False)
    qat = td.quantize_model(model, q)
    qat.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.train_on_batch(x, y)
    return qat


def run_speed(rounds=7, steps=10, log=print) -> dict:
    """`{codebook: [learned / fixed train-step time per round]}` (one TF thread)."""
    import tensorflow as tf  # noqa: PLC0415

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=256)
    models = {}
    for learn in (False, True):
        for cb, q in codebooks(learn).items():
            models[(cb, learn)] = _mlp_step(q, x, y)
    ratios: dict = {cb: [] for cb in codebooks(False)}
    for r in range(rounds):
        times = {}
        for key, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[key] = (time.perf_counter() - start) / steps
        for cb in ratios:
            ratios[cb].append(times[(cb, True)] / times[(cb, False)])
        log(f"round {r}: " + ", ".join(f"{cb} {ratios[cb][-1]:.3f}" for cb in ratios))
    return ratios


def speed_table(ratios: dict) -> str:
    rows = [
        [cb, f"{np.median(v):.3f}", f"{min(v):.3f}-{max(v):.3f}", str(len(v))]
        for cb, v in ratios.items()
    ]
    return common.md_table(["codebook", "learned / fixed step (median)", "range", "rounds"], rows)


def _but(layers) -> str:
    return f" but {', '.join(layers)}" if layers else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d", "digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=0, help="0: the benchmark's (30)")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--codebooks", nargs="+", choices=list(codebooks(False)))
    parser.add_argument(
        "--values", nargs="+", choices=["fixed", "learned"], default=["fixed", "learned"]
    )
    parser.add_argument("--scale", choices=["mean_abs", "learned"], default="mean_abs")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="0: --epochs")
    parser.add_argument("--lr-factor", type=float, default=finetune.DEFAULT.lr_factor)
    parser.add_argument("--distill", nargs="*", type=float, metavar="T ALPHA")
    parser.add_argument(
        "--layer",
        action="append",
        type=layer_spec,
        default=[],
        metavar="NAME=SPEC",
        help="one layer on float, int8 or values separated by commas (times --scale)",
    )
    args = parser.parse_args(argv)
    if not args.no_speed:
        print(speed_table(run_speed()), flush=True)
    if args.speed_only:
        return 0
    distill = None if args.distill is None else tuple(args.distill or finetune.DISTILL)
    if distill is not None and len(distill) != 2:
        parser.error("--distill takes no value or two: T ALPHA")
    recipe = dataclasses.replace(finetune.DEFAULT, lr_factor=args.lr_factor, distill=distill)
    layers = dict(args.layer)
    shown = ", ".join(f"{k}: {'float' if v is None else v}" for k, v in layers.items())
    print(f"fine-tuning: {recipe.describe()}" + (f"; layers {shown}" if layers else ""), flush=True)
    result = run_accuracy(
        args.tasks,
        args.seeds,
        args.epochs,
        log=lambda m: print(m, flush=True),
        names=args.codebooks,
        values=args.values,
        scale=args.scale,
        finetune_epochs=args.finetune_epochs,
        recipe=recipe,
        layers=layers,
    )
    print(accuracy_table(result, layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
