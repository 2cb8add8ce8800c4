"""Test DAGs for `par lint`: contract DAGs as `par` compiles them, and DOT drawn from them.

`contract_dag` compiles the Megatron spec, made small with `-D` overrides, into the README's DAG
contract; `render_dot` draws it with docs/graphviz.md's visual conventions (a cluster per pipeline
stage, a nested cluster per GPU, ellipses for collectives, `GPU:`/`Input:`/`Output:` lines).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import networkx as nx

from par.dsl.compiler import compile_file
from par.dsl.dag import ids
from par.dsl.units import ranges

SPEC = Path(__file__).resolve().parents[2] / "specs" / "megatron_tp8_pp2.par"
# The DAG's nodes and edges depend on the mesh, not on these sizes; small ones keep labels short.
SMALL = ("hidden=64", "heads=8", "ffn=256", "seq=8", "batch=4", "microbatches=1")


def contract_dag(*, layers: int = 16, tp: int = 8, pp: int = 2, dp: int = 1,
                 sp: bool = True) -> nx.DiGraph:
    """The DAG `par` compiles from the Megatron spec on this mesh; a copy, for tests to break."""
    return _compiled(layers, tp, pp, dp, sp).copy()


@cache
def _compiled(layers: int, tp: int, pp: int, dp: int, sp: bool) -> nx.DiGraph:
    defines = [*SMALL, f"layers={layers}", f"tp={tp}", f"pp={pp}", f"dp={dp}",
               f"sp={'on' if sp else 'off'}"]
    return compile_file(SPEC, defines).graph


def bypass_collectives(dag: nx.DiGraph, nodes) -> nx.DiGraph:
    """What the hand-written scripts do: keep the collective nodes, wire nothing to them, and
    join each producer straight to the consumer on its GPU (labels stay self-consistent)."""
    out = dag.copy()
    for node in nodes:
        preds, succs = list(out.predecessors(node)), list(out.successors(node))
        out.remove_edges_from([(p, node) for p in preds] + [(node, s) for s in succs])
        for pred in preds:
            out.nodes[pred]["out_shape"] = dag.nodes[node]["out_shape"]
            for succ in succs:
                if out.nodes[succ]["devices"] == out.nodes[pred]["devices"]:
                    out.add_edge(pred, succ)
    return out


# --- DOT -----------------------------------------------------------------------------------

_ENDS = (ids.INPUT, ids.OUTPUT)


def _dims(shape) -> str:
    names = ("batch", "seq", "hidden")
    return "[" + ", ".join(f"{name}={value}" for name, value in zip(names, shape, strict=True)) + "]"


def _label(data: dict) -> str:
    gpus = ranges(data["devices"]) if data["devices"] else "all"
    lines = [data["op"], f"GPU: {gpus}", f"Input: {_dims(data['in_shape'])}",
             f"Output: {_dims(data['out_shape'])}"]
    if data["kind"] == "comm":
        lines.insert(1, f"bytes: {data['bytes']}")
    return "\\n".join(lines)


def _node_line(node: str, data: dict, indent: str) -> str:
    shape = {"comm": "ellipse", "route": "parallelogram"}.get(data["kind"], "box")
    return f'{indent}{node} [label="{_label(data)}", shape={shape}];'


def render_dot(dag: nx.DiGraph, *, name: str = "deployment") -> str:
    """DOT text with one cluster per stage and a nested cluster per GPU."""
    lines = [f"digraph {name} {{", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    stages = sorted({data["stage"] for _, data in dag.nodes(data=True)})
    io = [node for node in dag if node in _ENDS]
    lines += [_node_line(node, dag.nodes[node], "  ") for node in io]
    for stage in stages:
        lines += _stage_cluster(dag, stage)
    lines += [f"  {src} -> {dst};" for src, dst in dag.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _stage_cluster(dag: nx.DiGraph, stage: int) -> list[str]:
    members = [(node, data) for node, data in dag.nodes(data=True)
               if data["stage"] == stage and node not in _ENDS]
    lines = [f"  subgraph cluster_stage_{stage} {{", f'    label="Stage {stage}";']
    per_gpu: dict[int, list[str]] = {}
    for node, data in members:
        if len(data["devices"]) == 1:
            per_gpu.setdefault(data["devices"][0], []).append(node)
        else:
            lines.append(_node_line(node, data, "    "))
    for gpu in sorted(per_gpu):
        lines += [f"    subgraph cluster_gpu{gpu} {{", f'      label="GPU {gpu}";']
        lines += [_node_line(node, dag.nodes[node], "      ") for node in per_gpu[gpu]]
        lines.append("    }")
    lines.append("  }")
    return lines
