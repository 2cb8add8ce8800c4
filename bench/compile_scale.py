"""Expansion and validation speed, from a 16-layer 16-GPU DAG up to about a million nodes.

For each size, in one run: the end-to-end time of `par check` (parse, check, lower, expand,
validate), nodes per second (wall and CPU), and the ratio against building a bare networkx
DiGraph of the same node ids and edges (no attributes), measured two ways: as Python runs it by
default, and with the cyclic GC paused as our compiler pauses it during expansion (the stricter
comparison); then the peak memory of the compile per node (a forked child's peak resident set
over its start, Linux). Per-node time should stay flat as the DAG grows: growth is linear.
Targets: at 1 M nodes, >= 200,000 nodes/s, <= 2x the bare build with the GC paused, <= 1.5 KB
per node.

The last column, `Dag s`, is not part of the compile: it is the time to build the
networkx-shaped `Dag` that the emitters read, which `par check` never builds and `par build`
builds once, before it renders.

Where the time goes. A Python dict per node is what cost: reading a node's attributes on this
kind of machine is about 0.3 µs a key once the graph outgrows the caches, and building the dict
and two adjacency dicts per node cost about what a bare networkx build costs. So expansion
writes the DAG in columns (par.dsl.dag.compact.CompactDag): per node its layer, stage and
devices and two adjacency lists of (number, edge dict); its attributes are its step's template,
one dict shared by every node the step stamps (a collective, a send or an input slice keeps its
own), and a stamped node has no id string: `layer_{layer}_{step}_gpu{rank}` follows from the
columns, and expansion refers to nodes by number. The validator reads the columns, and a dict
once per run of nodes sharing it (the ranks of one step, one after the other), so what it
reads stays in the cache; a one-operand node's checks take an inlined path; the shapes along an
edge are compared once per run of edges between the same two dicts, an edge dict's operands
once per run of edges sharing it; invariant 7 counts the nodes per pipeline path in the (layer,
op) row it last used. Mutation tests (tests/core/test_compact.py) show that a defect in one
node of a run is still found. `CompactDag.to_dag` builds the `Dag`: what expansion built
before, byte for byte (the dag.json goldens).

Measured at 1 M nodes (CPU). Before: expansion 4.1 s and validation 4.9 s, 103,000 nodes/s,
2.87x the bare build with the GC paused, 1,258 B per node. After: 214,000 to 245,000 nodes/s
in three runs, 0.77 to 0.98x the bare build, 605 to 644 B per node; with the machine in its
faster stretch, expansion about 2.1 s and validation 1.9 s. What is left per node: writing
its columns and an edge tuple at each end (about 2 µs) and the validator's loop (about 1.9 µs:
its edge, its rank's latest communication, its pipeline path). Building the `Dag` (last
column) costs about what expansion cost before; `par build` pays it once.

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


def measure(text: str, repeats: int) -> tuple[int, int, float, float, float, float, float]:
    ours, cpu, bare, paused, built = [], [], [], [], []
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        compiled = compile_text(text, "bench.par")
        ours.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        compact = compiled.compact
        ids = compact.names()
        nodes = ids
        edges = [(ids[source], ids[target]) for source, targets in enumerate(compact.succ) for target, _ in targets]
        start = time.perf_counter()
        graph = compiled.graph  # the networkx-shaped DAG the emitters read, built on first use
        built.append(time.perf_counter() - start)
        del compiled, compact, ids, graph
        bare.append(bare_build(nodes, edges, pause_gc=False))
        paused.append(bare_build(nodes, edges, pause_gc=True))
    middle = statistics.median
    return len(nodes), len(edges), middle(ours), middle(cpu), middle(bare), middle(paused), middle(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-nodes", type=int, default=1_100_000, help="skip sizes above this many nodes")
    args = parser.parse_args()
    compile_text(spec(*SIZES[0]), "warmup.par")  # grammar and library load once per process
    print(
        f"{'layers×tp×pp×dp':>18} {'nodes':>10} {'edges':>10} {'ours s':>8} {'nodes/s':>10} {'cpu s':>7} {'nodes/s':>10}"
        f" {'bare s':>8} {'ratio':>6} {'bare(nogc) s':>13} {'ratio':>6} {'peak B/node':>12} {'Dag s':>7}"
    )
    for layers, tp, pp, dp in SIZES:
        if layers * dp * (10 * tp + 2) > args.max_nodes:
            continue
        repeats = 3 if layers * dp < 2000 else 1
        text = spec(layers, tp, pp, dp)
        nodes, edges, ours, cpu, bare, paused, built = measure(text, repeats)
        per_node = peak_bytes(text) / nodes
        label = f"{layers}×{tp}×{pp}×{dp}"
        print(
            f"{label:>18} {nodes:>10,} {edges:>10,} {ours:>8.3f} {nodes / ours:>10,.0f} {cpu:>7.3f} {nodes / cpu:>10,.0f}"
            f" {bare:>8.3f} {ours / bare:>6.2f} {paused:>13.3f} {ours / paused:>6.2f} {per_node:>12,.0f} {built:>7.3f}"
        )
    print(
        f"targets at the largest size: >= 200,000 nodes/s: {'met' if nodes / cpu >= 200_000 else 'NOT met'} "
        f"({nodes / cpu:,.0f} by CPU); <= 2x bare (GC paused): {'met' if ours / paused <= 2 else 'NOT met'} "
        f"({ours / paused:.2f}); <= 1.5 KB/node: {'met' if per_node <= 1536 else 'NOT met'} ({per_node:,.0f} B)"
    )


if __name__ == "__main__":
    main()
