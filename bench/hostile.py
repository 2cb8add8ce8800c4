"""Hostile input, in-process: mutated specs and mutated DOT files must give diagnostics, fast.

Seeds are the specs of specs/ and tests/ and the DOT files of the corpus (shared/corpus/dags
next to the repository, or $PAR_CORPUS), tests/lint/corpus/ and the goldens. Each input is a
seed with 1 to 4 mutations on its bytes: bit flips, inserted tokens and keywords of the
grammar (grammar/*.lark) and of the language (settings, ops), deletions, duplicated slices,
huge numbers, deep nesting, and unicode and control characters. Then, in this process:

- a spec: read and decode it, parse, check and lower it, then expand and validate the DAG
  when its DAG is within the node budget (--max-nodes, checked by the compiler before it
  expands anything), and
  print its diagnostics as `par check` does;
- a DOT file: `par lint` on it, in every output format in turn.

A run passes when it ends normally or with clean diagnostics (CompileError; `par lint`'s exit
code 0 or 1). Any other exception is counted as a traceback, and its input and traceback are
saved under --save for reproduction (`par check FILE` / `par lint FILE`). Each run is timed;
runs over 10 s of CPU time are counted as slow, and one is stopped after --stop seconds. The process's
memory is capped (--memory-gb), so a run that would exhaust the machine raises MemoryError. The output: the
number of runs, tracebacks, slow runs and the slowest run; the exit code is 1 when any run
raised or was slow. The seed is fixed (--seed), so a result can be reproduced.

    python bench/hostile.py [--specs N --dots M --seed S --max-nodes K --save DIR]

"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from par.cli import main as par
from par.dsl.checks.check import OVERRIDABLE
from par.dsl.compiler import compile_text
from par.dsl.diagnostics import CompileError, format_all
from par.dsl.frontend.inputs import spec_inputs, spec_name
from par.dsl.registry.ops import OPS

ROOT = Path(__file__).resolve().parents[1]

SLOW = 10.0  # seconds: a run over this counts as slow
FORMATS = ("text", "md", "json")

# Characters a hostile or unlucky file holds: controls, terminal escapes, line and paragraph
# separators, a byte-order mark, right-to-left override, combining marks, astral characters.
ODD_TEXT = [
    "\x00", "\x07", "\x08", "\x0b", "\x0c", "\r", "\t", "\x1b[31m", "\x1b]8;;http://x\x07", "\x7f",
    "\x85", "\u2028", "\u2029", "\ufeff", "\u202e", "\u0301", "\u200b", "\U0001f600", "\uffff", "ǅ", "١٢",
]
ODD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
NUMBERS = ["0", "-1", "1e9", "99999999999999999999", str(2**63), str(2**64 + 1), "1" + "0" * 400, "0.5", "65536", "1048576"]
NUMBER = re.compile(rb"\d+")


def grammar_words(name: str) -> list[str]:
    """The literals of a lark grammar: its keywords and punctuation."""
    text = (ROOT / "grammar" / name).read_text(encoding="utf-8")
    return sorted(set(re.findall(r'"((?:[^"\\]|\\.)+)"i?', text)))


SPEC_WORDS = grammar_words("par.lark") + OVERRIDABLE + list(OPS) + ["column", "row", "replicated", "seq", "hidden", "x", "#"]
DOT_WORDS = grammar_words("dot.lark") + [
    "digraph", "subgraph", "cluster_0", "label", "shape", "->", "--", "=", ";", ",", '"', "<", ">",
    "<<b>x</b>>", "//", "/*", "*/", "#", "\\", "\\n", "allreduce", "AllGather", "GPU 0-7", "layer_0", "[8, 4096]",
]
NESTING = {"spec": [("(", ")"), ("{", "}"), ("[", "]"), ("-", "")], "dot": [("{", "}"), ("subgraph { ", " }"), ("[", "]"), ("<", ">")]}


def mutate(data: bytes, rng: random.Random, kind: str) -> bytes:
    """`data` with 1 to 4 random mutations, most often one."""
    words = SPEC_WORDS if kind == "spec" else DOT_WORDS
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):  # often one: more inputs get past the parser
        at = rng.randint(0, len(data))
        action = rng.choice(("flip", "token", "delete", "duplicate", "number", "nest", "odd", "odd_bytes"))
        if action == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        elif action == "token":
            word = rng.choice(words)
            data = data[:at] + rng.choice(("", " ", "\n")).encode() + word.encode() + b" " + data[at:]
        elif action == "delete":
            data = data[:at] + data[at + rng.choice((1, 2, 5, 20, 200)) :]
        elif action == "duplicate":
            end = min(len(data), at + rng.choice((1, 10, 80, 400, len(data))))
            data = data[:at] + data[at:end] * rng.choice((2, 3, 50, 1000)) + data[at:]
        elif action == "number":
            numbers = list(NUMBER.finditer(data))
            if numbers:
                found = rng.choice(numbers)
                data = data[: found.start()] + rng.choice(NUMBERS).encode() + data[found.end() :]
        elif action == "nest":
            opening, closing = rng.choice(NESTING[kind])
            depth = rng.choice((10, 100, 1000, 5000, 20000))
            data = data[:at] + (opening * depth + "1" + closing * depth).encode() + data[at:]
        elif action == "odd":
            data = data[:at] + "".join(rng.choices(ODD_TEXT, k=rng.randint(1, 3))).encode("utf-8") + data[at:]
        else:
            data = data[:at] + rng.choice(ODD_BYTES) + data[at:]
    return data


class Stopped(Exception):
    """A run went past --stop seconds."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_spec(path: Path, max_nodes: int) -> str:
    """Compile one spec under the compiler's node budget, as `par check --max-nodes` does; the outcome in a word."""
    inputs = spec_inputs([str(path)], None)
    try:
        compile_text(inputs.read(path), spec_name(path), max_nodes=max_nodes)
    except CompileError as exc:
        if not exc.diagnostics:
            raise AssertionError("a CompileError without diagnostics") from None
        format_all(exc.diagnostics, inputs.sources)
        return "diagnostics"
    return "compiled"


def run_dot(path: Path, fmt: str) -> str:
    """`par lint --format FMT` on one file; exit codes other than 0 and 1 are failures."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = par(["lint", str(path), "--format", fmt])
    if code not in (0, 1):
        raise AssertionError(f"par lint exited {code}: {err.getvalue().strip()}")
    return "findings" if code else "clean"


@dataclass
class Tally:
    runs: int = 0
    tracebacks: int = 0
    slow: int = 0
    slowest: tuple[float, str] = (0.0, "")
    outcomes: dict[str, int] = field(default_factory=dict)


def attempt(tally: Tally, name: str, data: bytes, suffix: str, run: Callable[[Path], str], save: Path, stop: float) -> None:
    """One run on `data` written to a scratch file; failures are saved under `save`."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"input{suffix}"
        path.write_bytes(data)
        start = time.process_time()  # CPU seconds: other work on the machine does not count
        problem = None
        try:
            with time_limit(stop):
                outcome = run(path)
        except Stopped:
            outcome, problem = "stopped", f"stopped after {stop:g} s\n"
        except (Exception, SystemExit):  # noqa: BLE001 - any of them is what this benchmark counts
            outcome, problem = "traceback", traceback.format_exc()
        elapsed = time.process_time() - start
    tally.runs += 1
    tally.outcomes[outcome] = tally.outcomes.get(outcome, 0) + 1
    tally.slowest = max(tally.slowest, (elapsed, name))
    if outcome == "traceback":
        tally.tracebacks += 1
    if elapsed > SLOW or outcome == "stopped":
        tally.slow += 1
    if problem is not None or elapsed > SLOW:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{name}{suffix}").write_bytes(data)
        (save / f"{name}.txt").write_text(problem or f"took {elapsed:.1f} s\n", encoding="utf-8")
        print(f"{name}: {outcome}, {elapsed:.2f} s: {(problem or '').strip().splitlines()[-1:] or ''}", file=sys.stderr)


def corpus() -> Path | None:
    for candidate in (os.environ.get("PAR_CORPUS"), ROOT / "shared/corpus/dags", ROOT.parent / "shared/corpus/dags"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def seeds() -> tuple[list[bytes], list[bytes]]:
    specs = sorted({*ROOT.glob("specs/*.par"), *ROOT.glob("tests/**/*.par")})
    dots = sorted({*ROOT.glob("tests/golden/*/*.dot"), *ROOT.glob("tests/lint/corpus/*.dot")})
    found = corpus()
    if found is not None:
        dots += sorted(found.glob("*.dot"))
    return [p.read_bytes() for p in specs], [p.read_bytes() for p in dots]


def report(label: str, tally: Tally) -> None:
    seconds, name = tally.slowest
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(tally.outcomes.items()))
    print(f"{label}: {tally.runs} runs ({outcomes}); {tally.tracebacks} tracebacks; {tally.slow} runs > {SLOW:g} s; slowest {seconds:.2f} s ({name})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, default=10_000, help="mutated specs to run (default 10000)")
    parser.add_argument("--dots", type=int, default=5_000, help="mutated DOT files to lint (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-nodes", type=int, default=200_000, help="the node budget each spec compiles under (the compiler's --max-nodes)")
    parser.add_argument("--stop", type=float, default=60.0, help="stop a run after this many seconds (counted as slow)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of this process (a MemoryError past it)")
    parser.add_argument("--save", type=Path, default=Path("hostile-failures"), help="folder for failing inputs")
    args = parser.parse_args()
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rng = random.Random(args.seed)
    spec_seeds, dot_seeds = seeds()
    specs, dots = Tally(), Tally()
    run_spec(ROOT / "specs" / "layerwise.par", args.max_nodes)  # load the grammars before timing
    run_dot(ROOT / "tests" / "golden" / "single_gpu" / "dag.dot", "text")
    for number in range(args.specs):
        data = mutate(rng.choice(spec_seeds), rng, "spec")
        attempt(specs, f"spec{number:05d}", data, ".par", lambda path: run_spec(path, args.max_nodes), args.save, args.stop)
    for number in range(args.dots):
        data = mutate(rng.choice(dot_seeds), rng, "dot")
        fmt = FORMATS[number % len(FORMATS)]
        attempt(dots, f"dot{number:05d}", data, ".dot", lambda path, fmt=fmt: run_dot(path, fmt), args.save, args.stop)
    print(f"seed {args.seed}; {len(spec_seeds)} spec seeds, {len(dot_seeds)} DOT seeds")
    report("specs", specs)
    report("dots", dots)
    failed = specs.tracebacks + specs.slow + dots.tracebacks + dots.slow
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
