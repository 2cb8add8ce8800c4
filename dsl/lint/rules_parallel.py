"""DAG011: a DAG that shows tensor parallelism but no collective a tensor-parallel layer needs."""

from __future__ import annotations

import re

from .findings import Finding, node_list
from .labels import label_lines
from .rules_dataflow import check_tp_merges, sharded_nodes
from .view import DagView

TP_COLLECTIVES = ("allreduce", "allgather", "reducescatter")
# "TP=8", "TP8", "4 TP", "4-way TP", "Tensor Parallel", "Column Parallel", "Row Parallel"
_TP_DECLARED = re.compile(
    r"(?<![a-z])(?:tp\s*=?\s*(?:[2-9]|[1-9]\d+)(?!\d)|(?:[2-9]|[1-9]\d+)[\s-]*(?:way\s+)?tp"
    r"(?![a-z])|tensor[\s_-]*parallel|column[\s_-]*parallel|row[\s_-]*parallel)", re.IGNORECASE)
# Also an AllReduce named inside a fused block's label: "(Up→Act→Down→AR)".
_TP_COLLECTIVE_NAMED = re.compile(
    r"all[\s_-]?reduce|all[\s_-]?gather|reduce[\s_-]?scatter|(?<![a-z])ar(?![a-z])",
    re.IGNORECASE)


def check_tp_without_collective(view: DagView) -> list[Finding]:
    """DAG011: tensor parallelism shown and no AllReduce, AllGather or ReduceScatter anywhere:
    not as a node, not on an edge, not even named inside a block's label. The evidence is the
    nodes whose labels say so (TP=n, Tensor/Column/Row Parallel) or, where none do, sharded ops
    (one op of a layer repeated on several GPUs) whose outputs meet in one node before the
    graph's output: data-parallel replicas also repeat every op, but only meet at the output.
    Left to DAG008 where that rule already found where the shards meet."""
    if _names_tp_collective(view) or check_tp_merges(view):
        return []
    evidence = [node for node in view.info if _declares_tp(view, node)] or _meeting_shards(view)
    if not evidence:
        return []
    first = min(evidence, key=lambda node: view.info[node].line)
    return [view.finding(
        "DAG011", view.info[first].line,
        f"the DAG shows tensor parallelism ({node_list(evidence, limit=4)}) but no AllReduce, "
        "AllGather or ReduceScatter anywhere: a tensor-parallel layer needs one where its "
        "shards or partial sums meet (after the attention output and the MLP projections)",
        evidence)]


def _meeting_shards(view: DagView) -> list[str]:
    shards = set(sharded_nodes(view))
    meeting: set[str] = set()
    for node, info in view.info.items():
        if info.kind not in ("route", "compute"):
            continue
        producers = [pred for pred in view.preds[node] if pred in shards]
        if len({view.info[pred].single_device for pred in producers}) >= 2:
            meeting.update(producers)
    return [node for node in view.info if node in meeting]


def _names_tp_collective(view: DagView) -> bool:
    if any(info.collective in TP_COLLECTIVES for info in view.info.values()):
        return True
    texts = [_text(view, node) for node in view.info]
    texts += [edge.attrs.get("label", "") for edge in view.graph.edges]
    if any(_TP_COLLECTIVE_NAMED.search(text) for text in texts):
        return True
    # a communication node that says it reduces ("Communication: hierarchical reduction")
    return any(info.kind == "comm" and "reduc" in _text(view, node).lower()
               for node, info in view.info.items())


def _declares_tp(view: DagView, node: str) -> bool:
    return bool(_TP_DECLARED.search(_text(view, node)))


def _text(view: DagView, node: str) -> str:
    dot_node = view.graph.nodes[node]
    lines = label_lines(dot_node.attrs.get("label", "\\N"), node_id=node,
                        graph_name=view.graph.name, html_label=dot_node.html_label)
    return " ".join([node] + lines)
