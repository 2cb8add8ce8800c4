"""Every artifact of a GPT-3-175B-shaped spec on 1,024 GPUs (96 layers, tp 8 x pp 16 x dp 8;
64,898 DAG nodes): each one's time and DAG nodes per second, then writing them all.

In one process, in CPU seconds (steadier than wall time on a shared machine) and wall seconds:
the compile (parse to validated DAG, for scale), then each artifact as `par build` renders it, in
its order (what several artifacts share, the DOT text of a drawing and the cost model, is
counted in the first that needs it: the cost in report.md), then `write_all` into a fresh
folder. The networkx-shaped `Dag` the emitters read is built once after the compile (the
compile gives the DAG in columns, par.dsl.dag.compact): its row, `(the Dag)`, is in the total.
Graphviz's layout of dag.compact.svg is an external program; it is listed but not in
the total (dag.svg is not rendered above 8,000 nodes). Targets: every artifact in under 5 s in
all, dag.dot and dag.json at 100,000 nodes/s or more.

Where the time went, and what was done about it (cProfile): the DOT view escaped every string
of every node character by character (`printable`: 30 s of the 34 s dag.dot took), then the
template called three Jinja macros per node and edge; now `printable` is one regular
expression, a drawing's nodes of one step share their escaped text (`NodeViews`), labels and
attribute lists are joined in Python, and the template's loops only lay them out; what is left
is Python's per-node work (`NodeViews.node`: the key of what a node shares, the label and
tooltip spliced together) and the template's loop (about a quarter). dag.json went through
networkx's `node_link_data` and a JSON encoder per line; now each distinct set of shared
attributes is encoded once and the nodes' id, layer, stage and devices are set into it. The
cost model (report.md) worked out each node's operands and extras once per rank; now once, and
the saved tensors and the model's parameters are counted once per report, not twice.

Later features had brought dag.dot down to about 75,000 nodes/s on a busy 2-core machine: each
node and edge of the drawing was an object (150,000 of them: a quarter of the time was the
garbage collector's) whose fields the template's loops laid out (0.2 s of Jinja). Now each is
its DOT statement, a string, and the template joins a cluster's nodes and all the edges in one
call each; an edge's attributes come from a table indexed by its ends' kinds. What is left is
Python's per-node work (the shared text's key, the label, tooltip and GPU column spliced in:
about 3 µs a node) and allocating the 26 MB of text (its page faults are most of the render's
0.1 s). dag.json now reads a node's shared attributes in one call (an itemgetter per set of
keys) instead of copying them out, and writes plain ids and one-GPU lists without the encoder.

Then, for bench/llama3_405b_cp.par's 236,000 nodes (bench/long_context.py): dag.json became
pieces of one list joined once, and dag.dot's template lays out a flat outline of the clusters
instead of a nested macro per level, which copied a drawing's text at every level; at 100
million characters (UCS-2, for the placement arrows) each copy costs about what writing them does. dag.json's nodes of a step take the last node's reader and text
with no look-up, and its edges write plain ids as they are; the full drawing's edges are a plain
loop (a comprehension per tail cost a call each) and its GPU nodes one f-string each; the compact
view reads each node's dict once. Here (2 shared cores, CPU): dag.dot 0.51 to 0.66 s before,
0.38 to 0.43 after (100,000 to 127,000 nodes/s before, 150,000 to 170,000 after), dag.json 0.39
to 0.48 before, 0.22 after (about 290,000 nodes/s), each file byte for byte what it was. What is
left is Python's work per node and edge and allocating the text. Tried and dropped: a GPU's
nodes as pieces of the file rather than statements (the final join of two million small pieces,
each widened to UCS-2, costs what the strings saved).

Then the two mixture-of-experts specs (specs/deepseek_v3.par, 82,870 nodes, and
specs/mixtral_8x7b.par) are built with `par build --svg none` in fresh processes, start-up
included: target < 5 s each. Where deepseek's time goes (CPU, in process): the compile about
1.1 s (expansion 0.5: routed layers are expanded step by step through the general path;
validation 0.45), dag.dot 1.2, report.md 1.1 (the saved tensors, the model's parameters, the
step estimate), dag.json 0.6, dag.compact.dot 0.2.

    python bench/emit_scale.py
"""

from __future__ import annotations

import gc
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from par import build as driver
from par.codegen.renderer import Skip
from par.dsl.compiler import compile_text

SPEC = """\
model gpt3 : gpt { layers 96  hidden 12288  heads 96  ffn 49152  batch 1536  seq 2048  dtype bf16 }
mesh { tp 8  pp 16  dp 8  microbatches 64 }
"""
TOTAL_TARGET_S = 5.0
RATE_TARGET = 100_000  # DAG nodes per second, for dag.dot and dag.json
RATED = ("dag.dot", "dag.json")
EXTERNAL = ("dag.svg", "dag.compact.svg")  # Graphviz
ROOT = Path(__file__).resolve().parents[1]
MOE_SPECS = (ROOT / "specs" / "deepseek_v3.par", ROOT / "specs" / "mixtral_8x7b.par")
MOE_TARGET_S = 5.0  # each, without SVG


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def main() -> None:
    gc.collect()
    cpu, wall = clocks()
    compiled = compile_text(SPEC, "gpt3_175b.par")
    cpu_end, wall_end = clocks()
    nodes = len(compiled.compact)
    print(f"{'compile':<18} {cpu_end - cpu:>7.2f} s cpu {wall_end - wall:>7.2f} s wall {nodes / (cpu_end - cpu):>10,.0f} nodes/s")
    cpu, wall = clocks()
    graph = compiled.graph  # built once, for every emitter: counted with them
    dag_cpu, dag_wall = (end - start for end, start in zip(clocks(), (cpu, wall), strict=True))
    print(f"GPT-3 175B, tp 8 x pp 16 x dp 8: {nodes:,} nodes, {graph.number_of_edges():,} edges")
    print(f"{'artifact':<18} {'cpu s':>7} {'':>6} {'wall s':>7} {'':>5} {'nodes/s':>10} {'bytes':>12}")
    print(f"{'(the Dag)':<18} {dag_cpu:>7.2f} s cpu {dag_wall:>7.2f} s wall {nodes / dag_cpu:>10,.0f}")
    artifacts = []
    total_cpu, total_wall = dag_cpu, dag_wall
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name, renderer in driver.artifact_renderers():
            cpu, wall = clocks()
            content = renderer(compiled)
            cpu_end, wall_end = clocks()
            spent_cpu, spent_wall = cpu_end - cpu, wall_end - wall
            if isinstance(content, Skip):
                print(f"{name:<18} skipped: {content.notice[:90]}...")
                continue
            data = content.encode("utf-8") if isinstance(content, str) else content
            artifacts.append(driver.Artifact(out / compiled.deployment.name / name, data))
            rates[name] = nodes / spent_cpu
            note = " (Graphviz, not in the total)" if name in EXTERNAL else ""
            if name not in EXTERNAL:
                total_cpu += spent_cpu
                total_wall += spent_wall
            print(f"{name:<18} {spent_cpu:>7.2f} s cpu {spent_wall:>7.2f} s wall {rates[name]:>10,.0f} {len(data):>12,}{note}")
        cpu, wall = clocks()
        driver.write_all(artifacts, out)
        cpu_end, wall_end = clocks()
    total_cpu += cpu_end - cpu
    total_wall += wall_end - wall
    print(f"{'write_all':<18} {cpu_end - cpu:>7.2f} s cpu {wall_end - wall:>7.2f} s wall")
    print(f"{'total':<18} {total_cpu:>7.2f} s cpu {total_wall:>7.2f} s wall")
    met = total_cpu < TOTAL_TARGET_S
    print(f"target: every artifact in < {TOTAL_TARGET_S:g} s: {'met' if met else 'NOT met'} ({total_cpu:.2f} s cpu)")
    for name in RATED:
        ok = rates[name] >= RATE_TARGET
        print(f"target: {name} >= {RATE_TARGET:,} nodes/s: {'met' if ok else 'NOT met'} ({rates[name]:,.0f})")
    print()
    print("the mixture-of-experts specs: `par build --svg none` in a fresh process, start-up included")
    for spec in MOE_SPECS:
        cpu, wall = fresh_build(spec)
        verdict = "met" if cpu < MOE_TARGET_S else "NOT met"
        print(f"{spec.stem:<18} {cpu:>7.2f} s cpu {wall:>7.2f} s wall  target < {MOE_TARGET_S:g} s: {verdict} (cpu)")


def fresh_build(spec: Path) -> tuple[float, float]:
    """(cpu s, wall s) of `par build SPEC --svg none` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "par", "build", str(spec), "-o", out, "--svg", "none"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


if __name__ == "__main__":
    main()
