"""How long `par build --svg none` takes on bench/llama3_405b_cp.par, against its 5 s target.

Llama 3 405B's shape at 128k tokens, tp 8 × cp 16 (128 GPUs), keys and values gathered once per
layer: about 236,000 DAG nodes (with `-D cp_attention=ring`, about 977,000). Prints the time of
the compile (parse, check, lower, expand, validate) and of each artifact, their sum, and the
ratio to the target; CPU time beside wall time, since a shared machine inflates the wall.

Where the time goes (2 shared cores, CPU seconds, cProfile and timed parts): compile about 2.5
(validation 1.3, expansion 0.9), dag.dot 1.4, report.md 2.3 (the cost model's passes
over the DAG: saved tensors, node and device times, parameters, transfers), dag.json 0.65,
dag.compact.dot 0.35; every part grows with the nodes, which are `cp × tp` per op per layer.
Each pass is bound by memory, not by Python's work: a node's attributes are a dict of about 18
keys in an allocation of its own, and reading a dozen of them costs about 3 µs per node at this
size, where reading one costs 0.1. So what pays is touching fewer nodes' dicts, or fewer times;
what is left of the saved tensors is mostly following each node's edges to the tensors it keeps
and writing one entry per tensor and rank.
Done: dag.json reads a node's shared attributes in one call and finds the text of its step by
them (ring attention's operand lists too), and a node with the last one's keys and values takes
its text with no look-up; dag.json and dag.dot write their text as pieces of one list joined
once, not by a template whose nested macros copied it at every level nor by a join per line or
cluster (the drawing is 100 million characters, UCS-2 for its arrows: each copy costs about what
writing it does), which took dag.json from 1.45 s to 0.65 and dag.dot from 1.9 to 1.4. What is
left of dag.dot is its 236,000 node statements (0.6 s with their dicts' reads), the edges (0.4:
each head's kind looked up) and the file's 200 MB (0.35, half of it page faults). Every
renderer runs with the cyclic GC paused (the full collections its 600,000 view objects set off
walked the whole DAG: over a second of dag.dot measured alone); the step estimate sums both
directions' device times in one walk, without a table of every node's time, and the accounting
walks the DAG fewer times, reads a node's numbers once per walk and finds once what the nodes
of an op share (its saves, its extra bytes per shape) and the tensor holding each node's
result. Each artifact is byte for byte what it was. Tried and dropped, no faster measured: the
cost model's saved tensors computed once per step, validator fast paths per node. Left: the
target needs passes that skip the nodes a step stamps alike (validation per step; one step key
for every emitter), see bench/compile_scale.py. The spec lives here rather than in specs/
because every test that builds specs/ at full size would build it.

    python bench/long_context.py [-D name=value ...]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from par.build import artifact_renderers
from par.dsl.compiler import compile_file
from par.workers import available_cpus

SPEC = Path(__file__).resolve().parent / "llama3_405b_cp.par"
TARGET_S = 5.0


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def parts(defines: list[str]) -> None:
    """The compile and each artifact in turn, in this process: where the time goes."""
    rows = []
    wall, cpu = clocks()
    compiled = compile_file(SPEC, defines)
    after = clocks()
    rows.append(("compile", after[0] - wall, after[1] - cpu))
    for name, renderer in artifact_renderers("none"):
        wall, cpu = clocks()
        renderer(compiled)
        after = clocks()
        rows.append((name, after[0] - wall, after[1] - cpu))
    print(f"{SPEC.name}: {compiled.graph.number_of_nodes():,} nodes, {compiled.graph.number_of_edges():,} edges")
    for name, seconds, used in rows:
        print(f"  {name:<16} {seconds:7.2f} s wall {used:7.2f} s CPU")
    total_wall, total_cpu = sum(row[1] for row in rows), sum(row[2] for row in rows)
    print(f"  {'total':<16} {total_wall:7.2f} s wall {total_cpu:7.2f} s CPU (one process, in turn)")


def build(defines: list[str], jobs: list[str]) -> tuple[float, float]:
    """`par build --svg none` as a user runs it: (wall, CPU of it and its workers)."""
    command = [sys.executable, "-m", "par", "build", str(SPEC), "--svg", "none", *jobs]
    command += [arg for define in defines for arg in ("-D", define)]
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([*command, "-o", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--runs", type=int, default=2, help="end-to-end builds of each kind (the best counts)")
    args = parser.parse_args(argv)
    parts(args.defines)
    cpus = available_cpus()
    print(f"par build --svg none, end to end ({cpus} CPUs; best of {args.runs}):")
    best = {}
    for label, jobs in ((f"-j {cpus} (default)", []), ("-j 1", ["-j", "1"])):
        runs = [build(args.defines, jobs) for _ in range(args.runs)]
        best[label] = min(runs)
        print(f"  {label:<16} {best[label][0]:7.2f} s wall {best[label][1]:7.2f} s CPU  (runs: {', '.join(f'{w:.2f}' for w, _ in runs)} s wall)")
    wall = best[f"-j {cpus} (default)"][0]
    verdict = "met" if wall < TARGET_S else "NOT met"
    print(f"target: par build --svg none in < {TARGET_S:g} s wall: {verdict} ({wall:.2f} s with {cpus} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
