"""How long `dot -Tsvg` takes on the drawings `par build` makes, and what the layout cap saves.

For each shipped spec, in one run: nodes, the time to emit dag.dot and dag.compact.dot, and the
time of `dot -Tsvg` on each. For drawings above LARGE_DRAWING nodes (where dag.dot caps dot's
x-coordinate pass with `nslimit`), `--uncapped` also times the same DOT without the cap and
prints the ratio (uncapped / capped); that run takes minutes on llama_gqa.

    python bench/graphviz_layout.py [--uncapped] [SPEC...]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

from par.codegen.dot.emit import (
    GRAPH_DEFAULTS,
    LARGE_DRAWING,
    emit_compact_dot,
    emit_dot,
    emit_view,
    full_view,
)
from par.dsl.compiler import compile_file

ROOT = Path(__file__).resolve().parents[1]


def timed_dot(program: str, text: str) -> float:
    start = time.perf_counter()
    subprocess.run([program, "-Tsvg", "-o", "/dev/null"], input=text.encode("utf-8"), check=True)
    return time.perf_counter() - start


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, help="spec files (default: specs/*.par)")
    parser.add_argument("--uncapped", action="store_true", help="also time large drawings without the nslimit cap")
    args = parser.parse_args()
    program = shutil.which("dot")
    if program is None:
        print("Graphviz `dot` is not on PATH", file=sys.stderr)
        return 1
    print(f"{'spec':<22} {'nodes':>6} {'emit dot':>9} {'dot -Tsvg':>10} {'compact':>8} {'uncapped':>9} {'ratio':>6}")
    for path in args.specs or sorted((ROOT / "specs").glob("*.par")):
        compiled = compile_file(path)
        nodes = compiled.graph.number_of_nodes()
        full, emit_s = timed(emit_dot, compiled)
        compact, _ = timed(emit_compact_dot, compiled)
        full_s, compact_s = timed_dot(program, full), timed_dot(program, compact)
        uncapped = ratio = "-"
        if args.uncapped and nodes > LARGE_DRAWING:
            view = full_view(compiled)
            assert view.graph_attrs != GRAPH_DEFAULTS, "a large drawing is capped"
            free_s = timed_dot(program, emit_view(dataclasses.replace(view, graph_attrs=GRAPH_DEFAULTS)))
            uncapped, ratio = f"{free_s:.2f} s", f"{free_s / full_s:.1f}x"
        print(f"{path.stem:<22} {nodes:>6} {emit_s:>7.2f} s {full_s:>8.2f} s {compact_s:>6.2f} s {uncapped:>9} {ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
