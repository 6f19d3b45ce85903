"""Command line: `tfmot-discrete demo` (also `python -m tfmot_discrete_demo demo`)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfmot-discrete",
        description="Train Keras weights to a codebook through TF-MOT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a digits MLP in float, sign, binary, "
        "ternary and [1,-1,0.5,-0.5] and print the accuracy table",
    )
    demo.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="epochs of the float model; codebook variants fine-tune half as many (default 30)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Keras' per-epoch output, and what TensorFlow, the converters and the "
        "interpreters log",
    )
    demo.add_argument(
        "--out",
        default="demo_out",
        help="where the exported .tflite files go (default demo_out); '' to skip the export",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be at least 1. Received: --epochs {args.epochs}")
        from tflite_export.logs import library_logs  # noqa: PLC0415

        # Entered before TensorFlow loads, so that its start-up lines are kept out too.
        with library_logs(args.verbose):
            from tfmot_discrete_demo import digits  # noqa: PLC0415

            digits.run(
                epochs=args.epochs,
                seed=args.seed,
                verbose=2 if args.verbose else 0,
                out_dir=args.out or None,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
