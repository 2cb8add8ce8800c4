"""Start-up: `par --version`, `par check` and `par build --svg none` of the seed baseline, each in
a fresh process, against `python -c pass` in the same run.

Each command runs REPEATS times; the medians of its wall time and of its CPU time (user +
system, steadier on a shared machine) are printed, with the ratio to `python -c pass` and the
target. Targets (wall; the CPU figure is printed beside it): --version < 0.15 s, check < 0.3 s,
build without SVG < 0.5 s.

What start-up cost and what was done about it (python -X importtime, cProfile): building the
LALR tables of the grammar in every process (about 0.3 s; now loaded from grammar/par.tables in
a few milliseconds, docs/architecture.md); every command importing the compiler, the emitters,
lint, networkx and jinja2 for `--version` (now each command imports what it runs, and
tests/frontend/test_startup_imports.py holds `--version` and `check` to it: `par new` had
brought the compiler and lark back into `--version`, 0.26 s); importing networkx (about 0.2 s)
for the DAG's container (now a small class of our own, par.dsl.dag.types.Dag); compiling the
Jinja templates in every build (about 50 ms; now loaded as bytecode built ahead of time,
templates/templates.bytecode, in 2 ms); folding the runtime into model.py (0.15 s: a parse of
each runtime module per level of nested `if`s on constants, and model.py parsed whole with the
runtime inlined; now one parse per module and model.py's own code parsed alone, 0.07 s);
xml.sax.saxutils for timeline.svg's escaping (30 ms of imports, now html.escape). What is left
in `par check` (CPU, quiet machine): Python itself with this environment's site (0.06 s), the
command line (0.04), lark (0.06: it imports regex and interegular when they are installed,
though tables need neither; interegular is what its strict mode checks a grammar with, should
the tables be stale), the compiler's modules (0.08), the block library's parse (0.02) and the
compile (0.03); in `par build`, also jinja2's import (0.04), the cost model's and emitters'
modules, folding the runtime (0.07) and parsing model.py's own code (0.03).

Start-up grew back as features were merged (mixture of experts, serving, context parallelism,
ZeRO, recompute, interleaved schedules), to 0.17, 0.38 and 0.73 s on a busy 2-core machine.
What the profile showed, and what was done: `par --version` and every command built the whole
command line, importing each command's module and what it imports (the SVG renderer, the
Hugging Face config reader, the compiler's diagnostics: 0.04 s); now `--version` answers before
the parser is built, and a command line that names a command registers that one alone.
Folding the runtime into model.py had grown to 0.1 s (twenty runtime modules, each parsed twice
and its trees walked); it now reads their outlines, built ahead of time
(codegen/pytorch/runtime/outlines.json): model.py in 0.02 s. lark imported regex and
interegular, which parsers loaded from tables never use (0.02 s); they are now loaded when lark
first uses them. The block library was parsed in every process (0.015 s); it now loads parsed
ahead of time (dsl/frontend/library/blocks.parsed). A build without drawings loads neither
Graphviz's runner (subprocess) nor, for a training spec, the serving cost and report.
tests/frontend/test_startup_imports.py holds what each command imports.

What is left in `par check` (CPU, in process): Python with this environment's site (0.05 s),
the command line with the diagnostics (0.015), lark (0.03), the compiler's modules (0.06, half
of it the dataclasses making their methods, about 0.8 ms per frozen class), loading the
parser's tables (0.007) and the compile (0.02); in `par build`, also jinja2 (0.025), the cost
model's and emitters' modules (0.06) and the artifacts (0.06: model.py, dag.dot, report.md,
dag.json).

    python bench/startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "specs" / "baseline_tp8_pp2.par"


# As an installed par runs: pip compiles every module to bytecode when it installs a package,
# so the children may write (and then read) __pycache__ even where PYTHONDONTWRITEBYTECODE is
# set; without bytecode, compiling par's sources costs about 0.2 s of every command.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def run(command: list[str]) -> tuple[float, float]:
    """(wall s, cpu s) of one run of `command` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    python = [sys.executable]
    with tempfile.TemporaryDirectory() as out:
        cases = [
            ("python -c pass", python + ["-c", "pass"], None),
            ("par --version", python + ["-m", "par", "--version"], 0.15),
            ("par check (seed)", python + ["-m", "par", "check", str(SEED)], 0.3),
            ("par build --svg none", python + ["-m", "par", "build", str(SEED), "-o", os.path.join(out, "b"), "--svg", "none"], 0.5),
        ]
        for _, command, _ in cases:  # warm the file cache and the .pyc files
            run(command)
        results = {}
        for name, command, _ in cases:
            walls, cpus = zip(*(run(command) for _ in range(args.repeats)), strict=True)
            results[name] = statistics.median(walls), statistics.median(cpus)
    base_wall, base_cpu = results["python -c pass"]
    print(f"{'command':<22} {'wall s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6}  target")
    for name, _, target in cases:
        wall, cpu = results[name]
        verdict = ""
        if target is not None:
            verdict = f"< {target:g} s: wall {'met' if wall < target else 'NOT met'}, cpu {'met' if cpu < target else 'NOT met'}"
        print(f"{name:<22} {wall:>7.3f} {wall / base_wall:>6.1f} {cpu:>7.3f} {cpu / base_cpu:>6.1f}  {verdict}")


if __name__ == "__main__":
    main()
