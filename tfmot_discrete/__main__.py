"""`python -m tfmot_discrete` points to the demo's own entry points."""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "The demo lives in its own package: run `tfmot-discrete demo` "
        "(or `python -m tfmot_discrete_demo demo`).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
