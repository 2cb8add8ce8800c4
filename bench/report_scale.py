"""report.md speed from 12,850 to 1.6 million DAG nodes: Llama-3-405B, tp 8 x pp 16, dp 1 to 128.

For each data-parallel degree, in one process, in CPU seconds (steadier than wall time on a
shared machine): the compile time (parse to validated DAG, for scale), the time of what
report.md needs (the cost model, report.md and timeline.svg) per DAG node, and that per-node
time as a ratio against the smallest size. A flat ratio means the report grows linearly with
the DAG; report.md's own length stays about the same at every size (identical devices share
a row).

    python bench/report_scale.py [--max-nodes N]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from par.codegen.cost import render_report, render_timeline
from par.dsl.compiler import compile_file
from par.dsl.cost import spec_cost

SPEC = Path(__file__).resolve().parent / "llama3_405b.par"
DP = (1, 2, 4, 8, 16, 32, 64, 128)
NODES_PER_REPLICA = 12_850  # nodes of the spec at dp 1; the DAG grows by this much per replica


def report_of(compiled) -> str:
    """What report.md needs: the cost model, report.md and timeline.svg."""
    cost = spec_cost(compiled)
    render_timeline(cost)
    return render_report(cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-nodes", type=int, default=1_700_000, help="skip sizes above this many nodes")
    args = parser.parse_args()
    print(f"{'dp':>4} {'nodes':>10} {'compile s':>10} {'report s':>9} {'us/node':>8} {'ratio':>6} {'report.md chars':>16}")
    report_of(compile_file(SPEC, ["dp=1"]))  # templates and the grammar load once per process
    first = None
    for dp in DP:
        if dp * NODES_PER_REPLICA > args.max_nodes:
            continue
        gc.collect()
        start = time.process_time()
        compiled = compile_file(SPEC, [f"dp={dp}"])
        compile_s = time.process_time() - start
        nodes = compiled.graph.number_of_nodes()
        gc.collect()
        start = time.process_time()
        report = report_of(compiled)
        elapsed = time.process_time() - start
        per_node = elapsed / nodes
        first = first or per_node
        print(f"{dp:>4} {nodes:>10,} {compile_s:>10.2f} {elapsed:>9.2f} {per_node * 1e6:>8.2f} {per_node / first:>6.2f} {len(report):>16,}", flush=True)
        del compiled, report
        gc.collect()


if __name__ == "__main__":
    main()
