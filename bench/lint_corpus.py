"""Lint the whole DOT corpus and print files per second, beside pydot's time to read it.

    python bench/lint_corpus.py [DIR_OR_FILE ...] [--repeat N]

Without paths it lints shared/corpus/dags (next to the repository, or $PAR_CORPUS). pydot is
timed on the same files in the same run, for context only (it is not a dependency of par);
its part is skipped when pydot is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsl.lint import run_lint  # noqa: E402
from dsl.lint.dot_syntax import _parser  # noqa: E402


def default_corpus() -> Path:
    for candidate in (os.environ.get("PAR_CORPUS"), REPO / "shared/corpus/dags",
                      REPO.parent / "shared/corpus/dags"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    sys.exit("no corpus found: pass a folder of .dot files or set PAR_CORPUS")


def dot_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.dot")) if path.is_dir() else [path])
    return files


def best_of(repeat: int, action) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def time_pydot(files: list[Path]) -> tuple[float, int] | None:
    try:
        import pydot
    except ImportError:
        return None
    texts = [path.read_text(encoding="utf-8", errors="replace") for path in files]
    read = 0
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for text in texts:  # pydot prints its parse errors; keep the report readable
            try:
                read += bool(pydot.graph_from_dot_data(text))
            except Exception:  # pydot raises on some broken files, returns None on others
                pass
    return time.perf_counter() - start, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    files = dot_files(args.paths or [str(default_corpus())])
    size = sum(path.stat().st_size for path in files)
    names = [str(path) for path in files]
    start = time.perf_counter()
    _parser()  # built once per process; counted separately
    build = time.perf_counter() - start
    lint = best_of(args.repeat, lambda: run_lint(names))
    print(f"corpus: {len(files)} files, {size / 1024:.0f} KiB")
    print(f"par lint: {lint:.3f} s (best of {args.repeat}) = {len(files) / lint:.1f} files/s, "
          f"{size / 1024 / lint:.0f} KiB/s; grammar built once in {build:.3f} s")
    pydot = time_pydot(files)
    if pydot is None:
        print("pydot: not installed, skipped")
        return
    seconds, read = pydot
    print(f"pydot (read only, {read} of {len(files)} files read): {seconds:.3f} s = "
          f"{len(files) / seconds:.1f} files/s")
    print(f"pydot read time / par lint time: {seconds / lint:.1f}x")


if __name__ == "__main__":
    main()
