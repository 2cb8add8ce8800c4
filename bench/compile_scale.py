"""Expansion and validation speed, from a 16-layer 16-GPU DAG up to about a million nodes.

For each size, in one run: the end-to-end time of `par check` (parse, check, lower, expand,
validate), nodes per second, and the ratio against building a bare networkx DiGraph of the same
node ids and edges (no attributes), measured two ways: as Python runs it by default, and with
the cyclic GC paused as our compiler pauses it during expansion (the stricter comparison).
Per-node time should stay flat as the DAG grows: growth is linear.

    python bench/compile_scale.py [--max-nodes N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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


def measure(text: str, repeats: int) -> tuple[int, int, float, float, float]:
    ours, bare, paused = [], [], []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        compiled = compile_text(text, "bench.par")
        ours.append(time.perf_counter() - start)
        graph = compiled.graph
        nodes, edges = list(graph.nodes), list(graph.edges)
        size = (graph.number_of_nodes(), graph.number_of_edges())
        del compiled, graph
        bare.append(bare_build(nodes, edges, pause_gc=False))
        paused.append(bare_build(nodes, edges, pause_gc=True))
    return size[0], size[1], statistics.median(ours), statistics.median(bare), statistics.median(paused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-nodes", type=int, default=1_100_000, help="skip sizes above this many nodes")
    args = parser.parse_args()
    compile_text(spec(*SIZES[0]), "warmup.par")  # grammar and library load once per process
    print(
        f"{'layers×tp×pp×dp':>18} {'nodes':>10} {'edges':>10} {'ours s':>8} {'nodes/s':>10} {'ns/node':>8}"
        f" {'bare s':>8} {'ratio':>6} {'bare(nogc) s':>13} {'ratio':>6}"
    )
    for layers, tp, pp, dp in SIZES:
        if layers * dp * (10 * tp + 2) > args.max_nodes:
            continue
        repeats = 3 if layers * dp < 2000 else 1
        nodes, edges, ours, bare, paused = measure(spec(layers, tp, pp, dp), repeats)
        label = f"{layers}×{tp}×{pp}×{dp}"
        print(
            f"{label:>18} {nodes:>10,} {edges:>10,} {ours:>8.3f} {nodes / ours:>10,.0f} {ours / nodes * 1e9:>8.0f}"
            f" {bare:>8.3f} {ours / bare:>6.2f} {paused:>13.3f} {ours / paused:>6.2f}"
        )


if __name__ == "__main__":
    main()
