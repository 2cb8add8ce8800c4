"""Rebuild the golden artifacts of every spec in tests/golden/specs/ with `par build`.

Run from anywhere: python tests/golden/regen.py. It runs `par build tests/golden/specs` from the
repository root (so the paths recorded in the artifacts are the same on every machine) and
copies every artifact into tests/golden/<stem>/, except the files Graphviz draws: their bytes
depend on the installed Graphviz version and fonts. Review the diff before committing.
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SPECS = "tests/golden/specs"  # relative to ROOT: the artifacts record this path
GRAPHVIZ_RENDERED = {"dag.svg", "dag.compact.svg"}


def build(out: Path) -> tuple[int, str]:
    """Exit code and stderr of `par build tests/golden/specs -o OUT`, run from the repository root."""
    from par.cli import main

    stderr = io.StringIO()
    previous = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(["build", SPECS, "-o", str(out)])
    finally:
        os.chdir(previous)
    return code, stderr.getvalue()


def golden_files(built: Path) -> dict[str, list[Path]]:
    """Per spec stem, the built files that belong in the golden folder."""
    return {
        folder.name: sorted(path for path in folder.iterdir() if path.name not in GRAPHVIZ_RENDERED)
        for folder in sorted(built.iterdir())
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as temporary:
        out = Path(temporary)
        code, output = build(out)
        if code != 0:
            print(output, file=sys.stderr)
            return code
        for stem, files in golden_files(out).items():
            target = HERE / stem
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            for path in files:
                shutil.copyfile(path, target / path.name)
            print(f"wrote tests/golden/{stem}/: {', '.join(path.name for path in files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
