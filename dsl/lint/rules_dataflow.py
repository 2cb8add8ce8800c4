"""Rules about what flows along edges: tensor-parallel merges (DAG008) and shapes (DAG009)."""

from __future__ import annotations

import re

from ..units import ranges
from .findings import Finding, node_list
from .labels import Shape
from .view import DagView

_DEVICE_TOKEN = re.compile(r"(gpu|device|dev|rank)_?\d+", re.IGNORECASE)
_TITLE_DEVICE = re.compile(r"(?<![a-z])(?:gpu|device|rank)\s*_?\d+", re.IGNORECASE)


def check_tp_merges(view: DagView) -> list[Finding]:
    """DAG008: outputs computed on different GPUs reach one computation with no collective.

    A producer on a single GPU holds only its piece (a shard or a partial sum); a computation
    that combines pieces from two or more GPUs needs a collective in between (AllReduce for
    partial sums, AllGather for shards). Pieces count when they feed the computation directly,
    or through routing/aggregation nodes (concat, gather, aggregate: the collective is drawn
    as a mere aggregation) when they are shards: one op of one layer, repeated per GPU.
    Merges into the graph's output or into a routing node alone are left alone.
    """
    shards = set(sharded_nodes(view))
    findings = []
    for node_id, info in view.info.items():
        if info.kind != "compute":
            continue
        pieces, via = _pieces(view, node_id, shards)
        devices = {view.info[piece].single_device for piece in pieces}
        if len(devices) < 2:
            continue
        where = f"layer {info.layer}: " if info.layer is not None else ""
        through = f" through {node_list(via, limit=3)}" if via else ""
        findings.append(view.finding(
            "DAG008", info.line,
            f"{where}outputs computed on GPUs {ranges(devices)} ({node_list(pieces, limit=4)}) "
            f"reach `{node_id}`{through} with no collective (AllReduce, AllGather, All-to-All) "
            "between them", [node_id]))
    return findings


def _pieces(view: DagView, node_id: str, shards: set[str]) -> tuple[list[str], list[str]]:
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
        elif info.kind != "comm" and info.single_device is not None and (
                direct or current in shards):
            pieces[current] = None
    return list(pieces), list(via)


def sharded_nodes(view: DagView) -> list[str]:
    """Computations that are one op of one layer repeated on several single GPUs: the same id
    but for the device (`fc1_gpu0`, `fc1_gpu1`) or the same title ("Q Projection GPU0").
    A node titled only by its device ("GPU 3") stands for the GPU itself, not an op."""
    groups: dict[tuple, list[str]] = {}
    for node_id, info in view.info.items():
        title = _TITLE_DEVICE.sub("", info.title).strip(" :-_").lower()
        if (info.single_device is None or info.kind != "compute" or not title
                or node_id in view.undefined or node_id in view.stray):
            continue
        groups.setdefault((info.layer, "id", op_key(node_id)), []).append(node_id)
        groups.setdefault((info.layer, "title", title), []).append(node_id)
    shards = {node for members in groups.values()
              if len({view.info[node].single_device for node in members}) >= 2 for node in members}
    return [node for node in view.info if node in shards]


def op_key(node_id: str) -> str:
    """The id without its device number: `layer_0_fc1_gpu3` -> `layer_0_fc1_gpu`."""
    return _DEVICE_TOKEN.sub(lambda match: match.group(1), node_id).lower()


def check_dims(view: DagView) -> list[Finding]:
    """DAG009: a node's stated Input: shape is produced by none of the nodes feeding it.

    A producer agrees when its Output: has the same dims (or, for numeric dims, the same
    number of elements: a reshape); when the consumer is a computation that takes a slice of it
    (R -> S: a local slice); or when all producers together make up the input (a concat, or a
    collective's input written as the whole tensor). One finding per consumer.
    """
    findings = []
    for node_id, info in view.info.items():
        wanted = info.dims.inputs if info.dims else ()
        producers = [pred for pred in view.preds[node_id]
                     if view.info[pred].dims and view.info[pred].dims.outputs]
        if not wanted or not producers:
            continue
        slicing = info.kind != "comm"
        outputs = [view.info[pred].dims.outputs for pred in producers]
        if any(_feeds(produced, wanted, slicing) for produced in outputs) or \
                _together(outputs, wanted):
            continue
        given = "; ".join(f"`{pred}` gives {_shapes(view.info[pred].dims.outputs)}"
                          for pred in producers[:4])
        more = f"; … and {len(producers) - 4} more" if len(producers) > 4 else ""
        findings.append(view.finding(
            "DAG009", view.edge_line[producers[0], node_id],
            f"`{node_id}` takes {_shapes(wanted)} but no producer gives it: {given}{more}",
            [node_id]))
    return findings


def _feeds(produced: tuple[Shape, ...], wanted: tuple[Shape, ...], slicing: bool) -> bool:
    for out in produced:
        for inp in wanted:
            if out.agrees_with(inp):
                return True
            if slicing and out.numel and inp.numel and out.numel % inp.numel == 0:
                return True
    return False


def _together(outputs: list[tuple[Shape, ...]], wanted: tuple[Shape, ...]) -> bool:
    if len(outputs) < 2 or any(produced[0].numel is None for produced in outputs):
        return False
    total = sum(produced[0].numel for produced in outputs)
    return any(inp.numel == total for inp in wanted)


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return " or ".join(dict.fromkeys(shape.text for shape in shapes))
