"""Rewrite the .expected snapshot of every bad spec in this folder from `par check`.

Run from anywhere: python tests/errors/regen.py. Review the diff before committing: a snapshot
is a promise about what users read.
"""

import contextlib
import io
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def check_output(name: str) -> tuple[int, str]:
    """Exit code and stderr of `par check NAME`, run inside this folder."""
    from par.cli import main

    stderr = io.StringIO()
    previous = os.getcwd()
    os.chdir(HERE)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(["check", name])
    finally:
        os.chdir(previous)
    return code, stderr.getvalue()


def main() -> None:
    for spec in sorted(HERE.glob("*.par")):
        _, output = check_output(spec.name)
        spec.with_suffix(".expected").write_text(output, encoding="utf-8")
        print(f"wrote {spec.with_suffix('.expected').name}", file=sys.stderr)


if __name__ == "__main__":
    main()
