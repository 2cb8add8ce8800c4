"""Expansion and validation speed, from a 16-layer 16-GPU DAG up to about a million nodes.

For each size, in one run: the end-to-end time of `par check` (parse, check, lower, expand,
validate), nodes per second (wall and CPU), and the ratio against building a bare networkx
DiGraph of the same node ids and edges (no attributes), measured two ways: as Python runs it by
default, and with the cyclic GC paused as our compiler pauses it during expansion (the stricter
comparison); then the peak memory of the compile per node (a forked child's peak resident set
over its start, Linux). Per-node time should stay flat as the DAG grows: growth is linear.
Targets: at 1 M nodes, >= 200,000 nodes/s, <= 2x the bare build with the GC paused, <= 1.5 KB
per node.

Where the time goes (cProfile and timed parts, 85,762 nodes): validation a little over half
(`node_pass`, the one pass over every node that checks invariants 2 to 6, then invariant 7's
layer paths), expansion the rest (`_layer`: a copy of the step's attribute dict per node, two
adjacency dicts, one edge dict per step and operand). networkx itself is not the floor any more:
the DAG is a small class laid out as networkx's DiGraph (par.dsl.dag.types.Dag), filled through
its dicts; what costs is Python's per-node work: about 16 dict reads per node in the validator
(a hand-built DAG may lack any attribute, so each is a `get`), the node's key for invariant 7,
and, at a million nodes, memory: the growth of per-node time from 85 k to 1 M nodes is the
allocator and the page faults of 1.3 GB (the system time), not more work per node. Done: the
validator keeps one dict of the nodes met (it proves acyclicity and holds each node's latest
communication for invariant 6) instead of a position per node and a second dict, traces a
collective's ranks in one pass over its inputs, and stores invariant 7's key with one
`setdefault`; expansion finds a replica's group and a step's operand indices once. Memory: a
node is its attribute dict (about 18 keys), its id, a devices list shared per rank and two
adjacency dicts; an edge one small dict shared by the ranks of a step.

Measured again at 1 M nodes (CPU): expansion 3.6 s, validation 4.6 s, 116,000 to 121,000
nodes/s in all and 2.26 to 2.41x the bare build in runs minutes apart (from 4.5, 5.6, 94,000
and 2.64x): expansion stamps every compute step through one inlined path, and the validator
decides the operands of a node with several and a collective's coverage of its group without
sorting or counting, and keys each compute node by its pipeline path as it meets it (no second
pass for invariant 7). Tried and no faster: a
validator fast path for a plain single-device node (its attributes in one itemgetter call),
attribute dicts reordered so that what the validator reads shares cache lines, split-key node
dicts, and writing a one-input node with its in-edge in one loop. Reading ten keys of a node's
dict costs about 0.7 µs and one key 0.3: what is left is Python's work per node, about 4 µs
to stamp a node and 4.5 µs to check it. The targets need a validation that does not read every
node's dict: the nodes a step stamps from one template differ only in layer, stage and
devices, so the shapes, placements and operands could be proved once per step and program,
leaving per node only its edges, its rank's issue order and its layer's key. Not done: it
trusts the expander's stamping, which the validator exists to check; a hand-built DAG would
keep today's full pass.

    python bench/compile_scale.py [--max-nodes N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import time

import networkx as nx

from par.dsl.compiler import compile_text, gc_paused

# (layers, tp, pp, dp): GPT blocks, Megatron placement; about layers·dp·(10·tp + 2) nodes.
SIZES = [(16, 8, 2, 1), (32, 8, 4, 4), (64, 8, 8, 16), (96, 8, 8, 64), (128, 8, 8, 96)]


def spec(layers: int, tp: int, pp: int, dp: int) -> str:
    return (
        f"model gpt : gpt {{ layers {layers}  hidden 4096  heads 32  ffn 16384  batch {dp * 8}  seq 4096  dtype bf16 }}\n"
        f"mesh {{ tp {tp}  pp {pp}  dp {dp}  microbatches 8 }}\n"
    )


def bare_build(nodes: list[str], edges: list[tuple[str, str]], *, pause_gc: bool) -> float:
    gc.collect()
    with gc_paused() if pause_gc else contextlib.nullcontext():
        start = time.perf_counter()
        graph = nx.DiGraph()
        graph.add_nodes_from(nodes)
        graph.add_edges_from(edges)
        elapsed = time.perf_counter() - start
    del graph
    return elapsed


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_bytes(text: str) -> int:
    """The compile's peak resident memory over its start, in a forked child (Linux)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh peak (fork starts it at the current size)
        os.close(read)
        start = _status_kb("VmRSS")
        compile_text(text, "bench.par")
        os.write(write, str((_status_kb("VmHWM") - start) * 1024).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        peak = int(pipe.read())
    os.waitpid(pid, 0)
    return peak


def measure(text: str, repeats: int) -> tuple[int, int, float, float, float, float]:
    ours, cpu, bare, paused = [], [], [], []
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        compiled = compile_text(text, "bench.par")
        ours.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        graph = compiled.graph
        nodes, edges = list(graph.nodes), list(graph.edges)
        size = (graph.number_of_nodes(), graph.number_of_edges())
        del compiled, graph
        bare.append(bare_build(nodes, edges, pause_gc=False))
        paused.append(bare_build(nodes, edges, pause_gc=True))
    return size[0], size[1], statistics.median(ours), statistics.median(cpu), statistics.median(bare), statistics.median(paused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-nodes", type=int, default=1_100_000, help="skip sizes above this many nodes")
    args = parser.parse_args()
    compile_text(spec(*SIZES[0]), "warmup.par")  # grammar and library load once per process
    print(
        f"{'layers×tp×pp×dp':>18} {'nodes':>10} {'edges':>10} {'ours s':>8} {'nodes/s':>10} {'cpu s':>7} {'nodes/s':>10}"
        f" {'bare s':>8} {'ratio':>6} {'bare(nogc) s':>13} {'ratio':>6} {'peak B/node':>12}"
    )
    for layers, tp, pp, dp in SIZES:
        if layers * dp * (10 * tp + 2) > args.max_nodes:
            continue
        repeats = 3 if layers * dp < 2000 else 1
        text = spec(layers, tp, pp, dp)
        nodes, edges, ours, cpu, bare, paused = measure(text, repeats)
        per_node = peak_bytes(text) / nodes
        label = f"{layers}×{tp}×{pp}×{dp}"
        print(
            f"{label:>18} {nodes:>10,} {edges:>10,} {ours:>8.3f} {nodes / ours:>10,.0f} {cpu:>7.3f} {nodes / cpu:>10,.0f}"
            f" {bare:>8.3f} {ours / bare:>6.2f} {paused:>13.3f} {ours / paused:>6.2f} {per_node:>12,.0f}"
        )
    print(
        f"targets at the largest size: >= 200,000 nodes/s: {'met' if nodes / cpu >= 200_000 else 'NOT met'} "
        f"({nodes / cpu:,.0f} by CPU); <= 2x bare (GC paused): {'met' if ours / paused <= 2 else 'NOT met'} "
        f"({ours / paused:.2f}); <= 1.5 KB/node: {'met' if per_node <= 1536 else 'NOT met'} ({per_node:,.0f} B)"
    )


if __name__ == "__main__":
    main()
