"""How long `par build --svg none` takes on bench/llama3_405b_cp.par, against its 5 s target.

Llama 3 405B's shape at 128k tokens, tp 8 × cp 16 (128 GPUs), keys and values gathered once per
layer: about 236,000 DAG nodes (with `-D cp_attention=ring`, about 977,000). Prints the time of
the compile (parse, check, lower, expand, validate) and of each artifact, their sum, and the
ratio to the target; CPU time beside wall time, since a shared machine inflates the wall.

Where the time goes (2 shared cores, CPU seconds): compile about 4, dag.dot and dag.json most
of the rest (a line of text per node), the cost report a full pass over the DAG; every part
grows with the nodes, which are `cp × tp` per op per layer. The spec lives here rather than in
specs/ because every test that builds specs/ at full size would build it.

    python bench/long_context.py [-D name=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from par.build import artifact_renderers
from par.dsl.compiler import compile_file

SPEC = Path(__file__).resolve().parent / "llama3_405b_cp.par"
TARGET_S = 5.0


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    rows = []
    wall, cpu = clocks()
    compiled = compile_file(SPEC, args.defines)
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
    print(f"  {'total':<16} {total_wall:7.2f} s wall {total_cpu:7.2f} s CPU")
    print(f"target {TARGET_S:g} s: CPU time is {total_cpu / TARGET_S:.2f}x the target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
