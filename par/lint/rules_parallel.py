"""Tensor parallelism: shards that meet with no collective (DAG008), and a DAG that shows
tensor parallelism but no collective a tensor-parallel layer needs (DAG011)."""

from __future__ import annotations

import re

from par.dsl.units import ranges
from par.lint.classify import COLLECTIVES
from par.lint.findings import Finding, node_list
from par.lint.view import DagView

TP_COLLECTIVES = ("allreduce", "allgather", "reducescatter")
# "TP=8", "TP8", "4 TP", "4-way TP", "Tensor Parallel", "Column Parallel", "Row Parallel"
_TP_DECLARED = re.compile(
    r"(?<![a-z])(?:tp\s*=?\s*(?:[2-9]|[1-9]\d+)(?!\d)|(?:[2-9]|[1-9]\d+)[\s-]*(?:way\s+)?tp"
    r"(?![a-z])|tensor[\s_-]*parallel|column[\s_-]*parallel|row[\s_-]*parallel)", re.IGNORECASE)
# The names of TP_COLLECTIVES, and "AR" inside a fused block's label: "(Up→Act→Down→AR)".
_TP_COLLECTIVE_NAMED = re.compile(
    "|".join([pattern.pattern for name, pattern in COLLECTIVES if name in TP_COLLECTIVES]
             + [r"(?<![a-z])ar(?![a-z])"]), re.IGNORECASE)


def check_tensor_parallel(view: DagView) -> list[Finding]:
    """DAG008 where shards meet with no collective; where none do, DAG011 if the DAG shows
    tensor parallelism and no tensor-parallel collective anywhere."""
    return check_tp_merges(view) or check_tp_without_collective(view)


def check_tp_merges(view: DagView) -> list[Finding]:
    """DAG008: outputs computed on different GPUs reach one computation with no collective.

    A producer on a single GPU holds only its piece (a shard or a partial sum); a computation
    that combines pieces from two or more GPUs needs a collective in between (AllReduce for
    partial sums, AllGather for shards). Pieces count when they feed the computation directly,
    or through routing/aggregation nodes (concat, gather, aggregate: the collective is drawn
    as a mere aggregation) when they are shards: one op of one layer, repeated per GPU.
    Merges into the graph's output or into a routing node alone are left alone.
    """
    findings = []
    for node_id, info in view.info.items():
        if info.kind != "compute":
            continue
        pieces, via = _pieces(view, node_id)
        devices = _several_gpus(view, pieces)
        if not devices:
            continue
        where = f"layer {info.layer}: " if info.layer is not None else ""
        through = f" through {node_list(via, limit=3)}" if via else ""
        findings.append(view.finding(
            "DAG008", info.line,
            f"{where}outputs computed on GPUs {ranges(devices)} ({node_list(pieces, limit=4)}) "
            f"reach `{node_id}`{through} with no collective (AllReduce, AllGather, All-to-All) "
            "between them", [node_id]))
    return findings


def _pieces(view: DagView, node_id: str) -> tuple[list[str], list[str]]:
    """Single-GPU producers reaching node_id without a collective; and the routing nodes between."""
    pieces: dict[str, None] = {}
    via: dict[str, None] = {}
    stack = [(pred, True) for pred in reversed(view.preds[node_id])
             if (pred, node_id) not in view.comm_edges]
    seen: set[str] = set()
    while stack:
        current, direct = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        info = view.info[current]
        if info.kind == "route":
            via[current] = None
            stack.extend((pred, False) for pred in reversed(view.preds[current])
                         if (pred, current) not in view.comm_edges)
        elif info.kind != "comm" and info.single_device is not None and current not in view.experts and (
                direct or current in view.shards):
            pieces[current] = None
    return list(pieces), list(via)


def _several_gpus(view: DagView, producers: list[str]) -> set[int]:
    """The GPUs of single-GPU producers when there are two or more of them, else none."""
    devices = {device for node in producers if (device := view.info[node].single_device) is not None}
    return devices if len(devices) >= 2 else set()


def check_tp_without_collective(view: DagView) -> list[Finding]:
    """DAG011: tensor parallelism shown and no AllReduce, AllGather or ReduceScatter anywhere:
    not as a node, not on an edge, not even named inside a block's label. The evidence is the
    nodes whose labels say so (TP=n, Tensor/Column/Row Parallel) or, where none do, sharded ops
    (one op of a layer repeated on several GPUs) whose outputs meet in one node before the
    graph's output: data-parallel replicas also repeat every op, but only meet at the output.
    `check_tensor_parallel` leaves it to DAG008 where that rule found where the shards meet."""
    if _names_tp_collective(view):
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
    """Shards that feed one routing node or computation from two or more GPUs, along edges
    that name no communication ("recv from GPU 3" is one)."""
    meeting: set[str] = set()
    for node, info in view.info.items():
        if info.kind not in ("route", "compute"):
            continue
        producers = [pred for pred in view.preds[node] if pred in view.shards
                     and pred not in view.experts and (pred, node) not in view.comm_edges]
        if _several_gpus(view, producers):
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
    return " ".join([node, *view.info[node].lines])
