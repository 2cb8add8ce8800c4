"""Test DAGs for `par lint`: contract DAGs as `par` builds them, and DOT drawn from them.

`contract_dag` builds a networkx DiGraph following DESIGN.md's DAG contract (ids, attrs, one
in-edge from and one out-edge to each member of a collective) for a Megatron-style block;
`render_dot` draws it with DESIGN.md's visual conventions (a cluster per pipeline stage, a
nested cluster per GPU, ellipses for collectives, `GPU:`/`Input:`/`Output:` lines).
"""

from __future__ import annotations

import networkx as nx

BATCH, SEQ, HIDDEN = 4, 64, 256


def rank_of(*, dp_rank: int, stage: int, tp_rank: int, tp: int, pp: int) -> int:
    return (dp_rank * pp + stage) * tp + tp_rank


def _block(tp: int, sp: bool) -> list[tuple[str, str, str, tuple, tuple]]:
    """(name, kind, op, in_shape, out_shape) for one layer, in dataflow order."""
    full, local = (BATCH, SEQ, HIDDEN), (BATCH, SEQ // tp if sp else SEQ, HIDDEN)
    qkv, heads = (BATCH, SEQ, 3 * HIDDEN // tp), (BATCH, SEQ, HIDDEN // tp)
    ffn = (BATCH, SEQ, 4 * HIDDEN // tp)
    gather, reduce = ("allgather", "reducescatter") if sp else (None, "allreduce")

    def tp_region(enter: str, leave: str, ops: list) -> list:
        """Column-parallel in, row-parallel out: the collectives around them (tp > 1)."""
        before = [(enter, "comm", gather, local, full)] if gather and tp > 1 else []
        after = [(leave, "comm", reduce, full, local)] if tp > 1 else []
        return before + ops + after

    return ([("ln1", "compute", "layernorm", local, local)]
            + tp_region("qkv", "attn", [("qkv", "compute", "linear", full, qkv),
                                        ("attn", "compute", "attention", qkv, heads),
                                        ("proj", "compute", "linear", heads, full)])
            + [("add1", "compute", "add", local, local),
               ("ln2", "compute", "layernorm", local, local)]
            + tp_region("mlp", "mlp", [("fc1", "compute", "linear", full, ffn),
                                       ("gelu", "compute", "gelu", ffn, ffn),
                                       ("fc2", "compute", "linear", ffn, full)])
            + [("add2", "compute", "add", local, local)])


def contract_dag(*, layers: int = 16, tp: int = 8, pp: int = 2, dp: int = 1,
                 sp: bool = True) -> nx.DiGraph:
    assert layers % pp == 0
    dag = nx.DiGraph()
    local = (BATCH, SEQ // tp if sp else SEQ, HIDDEN)
    dag.add_node("input", op="input", kind="compute", layer=None, stage=0, devices=[],
                 in_shape=local, out_shape=local)
    dag.add_node("output", op="output", kind="compute", layer=None, stage=pp - 1, devices=[],
                 in_shape=local, out_shape=local)
    for d in range(dp):
        # the node each tp rank's residual stream comes from
        tails = {t: "input" for t in range(tp)}
        for layer in range(layers):
            stage = layer // (layers // pp)
            ranks = [rank_of(dp_rank=d, stage=stage, tp_rank=t, tp=tp, pp=pp) for t in range(tp)]
            if layer and stage != (layer - 1) // (layers // pp):
                tails = _pipeline(dag, tails, ranks, stage, local)
            suffix = f"_dp{d}" if dp > 1 else ""
            tails = _layer(dag, tails, layer, stage, ranks, tp, sp, suffix=suffix)
        for tail in tails.values():
            dag.add_edge(tail, "output")
    return dag


def _pipeline(dag, tails, ranks, stage, shape):
    new_tails = {}
    for t, rank in enumerate(ranks):
        prev = dag.nodes[tails[t]]["devices"][0]
        send, recv = f"stage_{stage - 1}_send_gpu{prev}", f"stage_{stage}_recv_gpu{rank}"
        dag.add_node(send, op="send", kind="comm", layer=None, stage=stage - 1, devices=[prev],
                     in_shape=shape, out_shape=shape)
        dag.add_node(recv, op="recv", kind="comm", layer=None, stage=stage, devices=[rank],
                     in_shape=shape, out_shape=shape)
        dag.add_edges_from([(tails[t], send), (send, recv)])
        new_tails[t] = recv
    return new_tails


def _layer(dag, tails, layer, stage, ranks, tp, sp, *, suffix):
    current = dict(tails)  # tp rank -> latest node
    residual = dict(tails)
    for name, kind, op, in_shape, out_shape in _block(tp, sp):
        if kind == "comm":
            node = f"layer_{layer}_{op}_{name}{suffix}"
            dag.add_node(node, op=op, kind="comm", layer=layer, stage=stage, devices=list(ranks),
                         in_shape=in_shape, out_shape=out_shape)
            for t in range(tp):
                dag.add_edge(current[t], node)
            current = {t: node for t in range(tp)}
            continue
        for t, rank in enumerate(ranks):
            node = f"layer_{layer}_{name}_gpu{rank}"
            dag.add_node(node, op=op, kind="compute", layer=layer, stage=stage, devices=[rank],
                         in_shape=in_shape, out_shape=out_shape)
            dag.add_edge(current[t], node)
            if name in ("add1", "add2"):
                dag.add_edge(residual[t], node)
                residual[t] = node
            current[t] = node
    return current


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

def _dims(shape) -> str:
    names = ("batch", "seq", "hidden")
    return "[" + ", ".join(f"{name}={value}" for name, value in zip(names, shape)) + "]"


def _label(node: str, data: dict) -> str:
    devices = data["devices"]
    gpus = "all" if not devices else (str(devices[0]) if len(devices) == 1
                                      else f"{devices[0]}-{devices[-1]}")
    lines = [data["op"], f"GPU: {gpus}", f"Input: {_dims(data['in_shape'])}",
             f"Output: {_dims(data['out_shape'])}"]
    if data["kind"] == "comm":
        lines.insert(1, f"bytes: {2 * BATCH * SEQ * HIDDEN}")
    return "\\n".join(lines)


def _node_line(node: str, data: dict, indent: str) -> str:
    shape = {"comm": "ellipse", "route": "parallelogram"}.get(data["kind"], "box")
    return f'{indent}{node} [label="{_label(node, data)}", shape={shape}];'


def render_dot(dag: nx.DiGraph, *, name: str = "deployment") -> str:
    """DOT text with one cluster per stage and a nested cluster per GPU."""
    lines = [f"digraph {name} {{", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    stages = sorted({data["stage"] for _, data in dag.nodes(data=True)})
    io = [node for node, data in dag.nodes(data=True) if node in ("input", "output")]
    lines += [_node_line(node, dag.nodes[node], "  ") for node in io]
    for stage in stages:
        lines += _stage_cluster(dag, stage)
    lines += [f"  {src} -> {dst};" for src, dst in dag.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _stage_cluster(dag: nx.DiGraph, stage: int) -> list[str]:
    members = [(node, data) for node, data in dag.nodes(data=True)
               if data["stage"] == stage and node not in ("input", "output")]
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
