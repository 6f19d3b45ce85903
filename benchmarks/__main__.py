"""`python -m benchmarks [--quick | --smoke] [--out DIR]`: every benchmark, one Markdown file.

Writes `RESULTS.md` and the PNG plots into `--out` (defaults to this folder).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = pathlib.Path(__file__).resolve().parent


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 seed, few epochs (< 10 min)")
    mode.add_argument("--smoke", action="store_true", help="a minute: checks the tables only")
    p.add_argument("--out", type=pathlib.Path, default=HERE, help="output folder")
    p.add_argument(
        "--only",
        choices=("accuracy", "speed", "export"),
        action="append",
        help="run only these parts (export needs accuracy); repeatable",
    )
    return p.parse_args(argv)


def _targets_table(common, rows) -> str:
    return common.md_table(("target", "measured", "result"), rows)


def _accuracy_section(settings, env, out, log, clock) -> tuple[dict, list[str], list]:
    """Trains every variant; returns `(results, Markdown lines, target rows)`."""
    from benchmarks import accuracy, plots  # noqa: PLC0415

    seeds = ", ".join(str(s) for s in settings.seeds)
    log(f"[{clock}] accuracy")
    acc = accuracy.run(settings, log)
    doc = ["## Accuracy", ""]
    for task in acc["data"]:
        t = accuracy.TASKS[task]
        data = acc["data"][task]
        doc += [
            f"### {t.title}",
            "",
            f"{len(data[1])} training / {len(data[3])} test samples; Adam (lr {t.lr}), "
            f"batch {t.batch}, {acc['epochs'][task]} epochs, seeds {seeds} (mean ± standard "
            "deviation over seeds); the same pre-drawn data order for every variant. "
            "Clustering starts from the trained float model of the same seed and is then "
            "trained for the same number of epochs, then `strip_clustering`. "
            "Exported files: our codebooks in their narrowest exact format (verified by "
            "`tflite_export.export`), the others as int8 weight-only, TF-MOT QAT through "
            "`TFLiteConverter` with `Optimize.DEFAULT`; all evaluated with LiteRT. "
            f"Environment: {env}.",
            "",
            accuracy.table(acc, task),
            "",
        ]
    png = plots.accuracy_vs_bits(acc, out / "accuracy_vs_bits.png")
    doc += [f"![accuracy against bits per weight]({png.name})", ""]
    hist = plots.latent_histograms(acc, out / "latent_histograms.png")
    if hist is not None:
        doc += [f"![latent weights of trained layers]({hist.name})", ""]
    return acc, doc, accuracy.targets(acc)


def _speed_section(settings, env, log, clock) -> tuple[list[str], list]:
    """Train-step and projection timings; returns `(Markdown lines, target rows)`."""
    from benchmarks import speed  # noqa: PLC0415

    log(f"[{clock}] speed")
    steps = speed.run_steps(settings, log)
    doc = [
        "## Training cost",
        "",
        "Train-step time of each variant divided by the float model's (a compiled Adam "
        "step, `tf.function`); all variants of one model are built in one process, warmed "
        f"up, then run in turn, {settings.speed_block} steps each, for "
        f"{settings.speed_rounds} rounds; the ratio of median step times. MLP: "
        f"64-W-W-10, batch {speed.BATCH['MLP']}; CNN: three 3x3 stride-2 convolutions of "
        f"width W on 32x32x3 inputs, batch {speed.BATCH['CNN']}; no BatchNorm; random data. "
        f"Seed 0. Environment: {env}. The machine was shared with other work, so single "
        "ratios carry a few percent of noise.",
        "",
        speed.steps_table(steps),
        "",
    ]
    log(f"[{clock}] projection")
    proj = speed.run_projection(settings, log)
    doc += [
        f"Projection alone on N = {speed.PROJECTION_N:,} weights, forward and backward "
        f"(`tf.function`), median of {settings.projection_repeats} calls, latent weights "
        "uniform in [-1.5, 1.5] (seed 0), codebook `linspace(-1, 1, K)`; peak memory is "
        "the growth of the process's peak resident set (`VmHWM` in `/proc/self/status`) "
        "over the first and the timed calls, each K in a fresh subprocess. "
        f"Environment: {env}.",
        "",
        speed.projection_table(proj),
        "",
    ]
    return doc, speed.steps_targets(steps) + speed.projection_targets(proj)


def _export_section(settings, acc, env, log, clock) -> list[str]:
    """Exports the accuracy run's models; returns the Markdown lines."""
    from benchmarks import accuracy, export  # noqa: PLC0415

    log(f"[{clock}] export")
    rows = export.run(settings, acc, log)
    doc = ["## Export", ""]
    for task in acc["data"]:
        doc += [
            f"### {accuracy.TASKS[task].title}",
            "",
            f"Models of seed {settings.seeds[0]} ({acc['epochs'][task]} epochs) from the "
            "accuracy run. Bits per weight "
            "stored: of the codebook weights (our variants, read back from the file) or of "
            "the format (others). Latency: LiteRT, 1 thread, batch 1, median over "
            f"{settings.latency_rounds} interleaved rounds of 20 invokes; against the float "
            f"file of the same model. Environment: {env}.",
            "",
            export.table(rows, task),
            "",
        ]
    notes = export.notes(rows)
    if notes:
        doc += ["Files not written:", ""] + [f"- {n}" for n in notes] + [""]
    return doc


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from benchmarks import common  # noqa: PLC0415

    settings = common.SETTINGS["quick" if args.quick else "smoke" if args.smoke else "full"]
    parts = set(args.only or ("accuracy", "speed", "export"))
    if "export" in parts:
        parts.add("accuracy")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    clock = common.Clock()

    def log(msg):
        print(msg, flush=True)

    env = common.environment_line()
    seeds = ", ".join(str(s) for s in settings.seeds)
    doc = [
        "# Benchmarks",
        "",
        f"Generated by `python -m benchmarks{'' if settings.name == 'full' else ' --' + settings.name}` "
        f"on {datetime.date.today().isoformat()} ({settings.name} run).",
        "",
        f"Environment: {env}.",
        "",
    ]
    targets = []
    if "accuracy" in parts:
        acc, lines, rows = _accuracy_section(settings, env, out, log, clock)
        doc += lines
        targets += rows
    if "speed" in parts:
        lines, rows = _speed_section(settings, env, log, clock)
        doc += lines
        targets += rows
    if "export" in parts:
        doc += _export_section(settings, acc, env, log, clock)
    if targets:
        doc[6:6] = [
            "## Targets",
            "",
            f"Seeds {seeds}; epochs: digits {settings.digits_epochs}, MNIST-1D "
            f"{settings.mnist1d_epochs}; accuracy targets compare means over seeds. "
            f"Environment: {env}.",
            "",
            _targets_table(common, targets),
            "",
        ]
    doc += [f"Total run time: {clock}.".replace("  ", " "), ""]
    (out / "RESULTS.md").write_text("\n".join(doc))
    log(f"[{clock}] wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
