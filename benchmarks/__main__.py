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
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="speed: models timed at the same time, one process each (CPU time is measured)",
    )
    return p.parse_args(argv)


#: The section each part writes, and how its rows of the targets table begin.
SECTIONS = {"accuracy": "## Accuracy", "speed": "## Training cost", "export": "## Export"}
TARGETS_OF = {
    "accuracy": ("digits:", "mnist1d:"),
    "speed": ("train step", "projection"),
    "export": (),
}


def _section_span(lines, heading):
    """`(start, end)` line indices of the `## ` section `heading`, or None."""
    if heading not in lines:
        return None
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def replace_section(old: str, new: str, heading: str) -> str:
    r"""`old` with its section `heading` replaced by that section of `new` (appended if new).

    Example:

    >>> replace_section("# T\n## A\nx\n## B\ny", "## A\nz\n## C", "## A")
    '# T\n## A\nz\n## B\ny'
    """
    old_lines, new_lines = old.splitlines(), new.splitlines()
    src = _section_span(new_lines, heading)
    if src is None:
        return old
    block = new_lines[src[0] : src[1]]
    dst = _section_span(old_lines, heading)
    if dst is None:
        return "\n".join(old_lines + [""] + block)
    return "\n".join(old_lines[: dst[0]] + block + old_lines[dst[1] :])


def replace_target_rows(old: str, rows, prefixes) -> str:
    """`old` with the rows of its targets table that begin with `prefixes` replaced by `rows`."""
    lines = old.splitlines()
    span = _section_span(lines, "## Targets")
    if span is None or not prefixes:
        return old
    table = [i for i in range(*span) if lines[i].startswith("| ")][1:]  # without the header
    keep = [i for i in table if not lines[i][2:].startswith(tuple(prefixes))]
    at = next((i for i in table if i not in keep), table[-1] + 1 if table else span[1])
    new_rows = [f"| {' | '.join(str(c) for c in r)} |" for r in rows]
    drop = set(table) - set(keep)
    before = [ln for i, ln in enumerate(lines[:at]) if i not in drop]
    after = [ln for i, ln in enumerate(lines[at:], start=at) if i not in drop]
    return "\n".join(before + new_rows + after)


def _targets_table(common, rows) -> str:
    return common.md_table(("target", "measured", "result"), rows)


def _accuracy_section(settings, env, out, log, clock) -> tuple[dict, list[str], list]:
    """Trains every variant; returns `(results, Markdown lines, target rows)`."""
    from benchmarks import accuracy  # noqa: PLC0415

    log(f"[{clock}] accuracy")
    acc = accuracy.run(settings, log)
    doc = accuracy.section(acc, settings.seeds, env, out)
    return acc, doc, accuracy.targets(acc)


def _speed_section(settings, env, log, clock, jobs=1) -> tuple[list[str], list]:
    """Train-step and projection timings; returns `(Markdown lines, target rows)`."""
    from benchmarks import speed  # noqa: PLC0415

    log(f"[{clock}] speed")
    steps = speed.run_steps(settings, log, jobs=jobs)
    doc = [
        "## Training cost",
        "",
        "Train-step time of each variant divided by the float model's compiled the same "
        "way: an Adam step as a `tf.function` (`jit_compile=False`, what `model.compile` "
        "gives by default) or with `jit_compile=True` (XLA, as `model.compile(..., "
        "jit_compile=True)`). Each model runs in its own process with one TensorFlow "
        "thread; all its variants, both ways, are built, warmed up, then run in turn, "
        f"{settings.speed_block} steps each, for {settings.speed_rounds} rounds; the "
        "ratio is the median over rounds of the variant's step time over the float "
        "model's in the same round, timed as CPU time of the process (with one thread, "
        "the compute time; wall time on a shared machine measures the scheduler). "
        f"MLP: 64-W-W-10, batch {speed.BATCH['MLP']}; CNN: three 3x3 stride-2 "
        f"convolutions of width W on 32x32x3 inputs, batch {speed.BATCH['CNN']}; no "
        f"BatchNorm; random data. Seed 0. Environment: {env}. The machine was shared "
        "with other work, which slows memory access too: interleaving the variants keeps "
        "the ratios comparable, not the absolute times.",
        "",
        speed.steps_table(steps),
        "",
    ]
    log(f"[{clock}] projection")
    proj = speed.run_projection(settings, log)
    doc += [
        f"Projection alone on N = {speed.PROJECTION_N:,} weights, forward and backward "
        "(`tf.function`, without and with `jit_compile`, one thread), median CPU time "
        f"of {settings.projection_repeats} calls, latent weights uniform in [-1.5, 1.5] "
        "(seed 0); codebook `linspace(-1, 1, K)` (evenly spaced) or "
        "`sinh(linspace(-3, 3, K)) / sinh(3)` (unevenly spaced); peak memory is "
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


def _packed_section(settings, env, log, clock) -> tuple[list[str], list]:
    """The tflm_packed size-target models; returns (Markdown lines, target rows)."""
    from benchmarks import export  # noqa: PLC0415

    log(f"[{clock}] export: tflm_packed size targets")
    rows = export.packed_run(settings, log)
    doc = [
        "### tflm_packed: size targets",
        "",
        "Each model trained on the digits training set (the MLPs on the 64 pixels, "
        "MobileNetV2 on the 8x8 images scaled to 32x32x3), then "
        '`tflite_export.export(..., format="tflm_packed")` with 64 test images as '
        "representative data (it checks that the packed file's TFLM outputs equal the "
        "full_int8 file's on them). Arena: bytes TFLM's recording allocator reports; "
        "latency: TFLM Python interpreter on this machine, median per inference, "
        f"interleaved. Environment: {env}.",
        "",
        export.packed_table(rows),
        "",
    ]
    return doc, export.packed_targets(rows)


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
        lines, rows = _speed_section(settings, env, log, clock, args.jobs)
        doc += lines
        targets += rows
    if "export" in parts:
        doc += _export_section(settings, acc, env, log, clock)
        lines, rows = _packed_section(settings, env, log, clock)
        doc += lines
        targets += rows
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
    path = out / "RESULTS.md"
    if args.only and path.exists():
        text = path.read_text()
        for part in sorted(parts):
            text = replace_section(text, "\n".join(doc), SECTIONS[part])
        text = replace_target_rows(text, targets, [p for part in parts for p in TARGETS_OF[part]])
        path.write_text(text.rstrip("\n") + "\n")
    else:
        path.write_text("\n".join(doc))
    log(f"[{clock}] wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
