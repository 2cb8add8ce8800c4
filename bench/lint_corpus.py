"""Lint the whole DOT corpus and print files per second, beside pydot's time to read it.

    python bench/lint_corpus.py [DIR_OR_FILE ...] [--repeat N]

Without paths it lints shared/corpus/dags (next to the repository, or $PAR_CORPUS). pydot is
timed on the same files in the same run and in the same way (best of N), for context only (it
is not a dependency of par); its part is skipped when pydot is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lint"))

from lint_snapshots import full_corpus  # noqa: E402

from par.dsl.frontend.inputs import collect_files  # noqa: E402
from par.lint import DOT_SUFFIXES, run_lint  # noqa: E402
from par.lint.dot_reader import read_dot_text  # noqa: E402


def best_of(repeat: int, action):
    """The shortest of `repeat` runs of action(), in seconds, and what the last run returned."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def pydot_reader(files: list[Path]):
    """A function that reads every file with pydot and returns how many it read; None where
    pydot is not installed."""
    try:
        import pydot
    except ImportError:
        return None
    texts = [path.read_text(encoding="utf-8", errors="replace") for path in files]

    def read_all() -> int:
        read = 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for text in texts:  # pydot prints its parse errors; keep the report readable
                try:
                    read += bool(pydot.graph_from_dot_data(text))
                except Exception:  # pydot raises on some broken files, returns None on others
                    pass
        return read

    return read_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    corpus = full_corpus()
    if not args.paths and corpus is None:
        sys.exit("no corpus found: pass a folder of .dot files or set PAR_CORPUS")
    files = collect_files(args.paths or [str(corpus)], suffixes=DOT_SUFFIXES)
    size = sum(path.stat().st_size for path in files)
    names = [str(path) for path in files]
    start = time.perf_counter()
    read_dot_text("digraph {}")  # the grammar is built once per process; counted separately
    build = time.perf_counter() - start
    lint, _ = best_of(args.repeat, lambda: run_lint(names))
    print(f"corpus: {len(files)} files, {size / 1024:.0f} KiB")
    print(f"par lint: {lint:.3f} s (best of {args.repeat}) = {len(files) / lint:.1f} files/s, "
          f"{size / 1024 / lint:.0f} KiB/s; grammar built once in {build:.3f} s")
    read_all = pydot_reader(files)
    if read_all is None:
        print("pydot: not installed, skipped")
        return
    seconds, read = best_of(args.repeat, read_all)
    print(f"pydot (read only, {read} of {len(files)} files read): {seconds:.3f} s "
          f"(best of {args.repeat}) = {len(files) / seconds:.1f} files/s")
    print(f"pydot read time / par lint time: {seconds / lint:.1f}x")


if __name__ == "__main__":
    main()
