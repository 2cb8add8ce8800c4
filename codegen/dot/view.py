"""The view-model of a DAG drawing: clusters, nodes and edges whose strings are DOT-ready.

`templates/dag.dot.jinja` only lays these out. Every id and attribute value here is already a
DOT quoted string (`dot_text.quoted`), every title and row already escaped for an HTML-like
label (`dot_text.html`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from par.codegen.dot import style
from par.codegen.dot.text import (
    dims,
    gpus,
    html,
    printable,
    quoted,
    quoted_lines,
)
from par.codegen.summary import mesh_line, model_line
from par.dsl.dag.types import GraphAttrs, NodeAttrs
from par.dsl.registry.collectives import PIPELINE
from par.dsl.units import size as human_bytes

Attrs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DotNode:
    id: str
    title: str
    rows: tuple[str, ...]
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class DotEdge:
    tail: str
    head: str
    attrs: Attrs = ()


@dataclass(slots=True)
class DotCluster:
    id: str
    title: str
    rows: tuple[str, ...]
    attrs: Attrs
    nodes: list[DotNode] = field(default_factory=list)
    clusters: list[DotCluster] = field(default_factory=list)

    def pruned(self) -> DotCluster | None:
        """This cluster without empty sub-clusters; None when nothing is left."""
        self.clusters = [kept for kept in (child.pruned() for child in self.clusters) if kept]
        return self if self.nodes or self.clusters else None


@dataclass(slots=True)
class DotGraph:
    name: str
    banner: str
    title: str
    rows: tuple[str, ...]
    graph_attrs: Attrs
    node_attrs: Attrs
    edge_attrs: Attrs
    nodes: list[DotNode]
    clusters: list[DotCluster]
    edges: list[DotEdge]
    # Node ids laid out on one rank, left to right in this order (GPUs in rank order, legend).
    rows_in_order: list[list[str]] = field(default_factory=list)


def look_attrs(look: style.Look) -> Attrs:
    return (
        ("shape", look.shape),
        ("style", quoted(look.style)),
        ("fillcolor", quoted(look.fill)),
        ("color", quoted(look.border)),
    )


# Node defaults: a computation; other nodes override the look.
NODE_DEFAULTS = look_attrs(style.COMPUTE) + (
    ("fontname", quoted("Helvetica,Arial,sans-serif")),
    ("fontsize", "10"),
    ("margin", quoted("0.10,0.04")),
)
EDGE_DEFAULTS = (("color", quoted(style.EDGE_COLOUR)), ("arrowsize", "0.6"), ("penwidth", "0.8"))


def node_view(node_id: str, data: NodeAttrs, *, extra: Attrs = ()) -> DotNode:
    """A DAG node: its op, GPU(s), Input/Output dims, bytes for communication; facts in the tooltip."""
    look = style.look_of(data)
    attrs = (() if look == style.COMPUTE else look_attrs(look)) + extra + (("tooltip", tooltip(node_id, data)),)
    return DotNode(quoted(node_id), html(node_title(data)), tuple(html(row) for row in node_rows(data)), attrs)


def node_title(data: NodeAttrs) -> str:
    op, name = data["op"], data["name"]
    if op in ("input", "output"):
        return op.capitalize()
    if data["kind"] == "comm":
        label = name.removeprefix(f"{op}_")
        shown = style.display_name(op)
        return shown if label == op else f"{shown} ({label})"
    if data["kind"] == "route":
        return f"Slice ({name.removeprefix('slice_')})"
    kind = f" ({data['style']})" if data.get("style") else ""
    return f"{name}: {op}{kind}"


def node_rows(data: NodeAttrs) -> list[str]:
    where = gpus(data["devices"])
    if data["layer"] is not None:
        where = f"layer {data['layer']} · {where}"
    if "out_placement" in data and data["op"] not in PIPELINE:
        where += f" · {data['in_placement']} → {data['out_placement']}"
    rows = [where, f"Input: {dims(data['in_shape'])}", f"Output: {dims(data['out_shape'])}"]
    if data["kind"] == "comm":
        rows.append(wire_row(data))
    return rows


def wire_row(data: NodeAttrs) -> str:
    if data["op"] == "send":
        return f"to GPU {data['peer']}: {human_bytes(data['wire_bytes'])} sent"
    if data["op"] == "recv":
        return f"from GPU {data['peer']}: {human_bytes(data['bytes'])} received"
    return f"{human_bytes(data['wire_bytes'])} sent/rank"


def tooltip(node_id: str, data: NodeAttrs) -> str:
    lines = [node_id]
    if data.get("flops") or data.get("params"):
        lines.append(f"{data['flops']:,} FLOPs, {data['params']:,} parameters per GPU")
    lines.append(f"from {data['src']}")
    if data.get("reason"):
        lines.append(data["reason"])
    return quoted_lines(lines)


def edge_view(tail: str, head: str, *, tail_data: Mapping[str, Any], head_data: Mapping[str, Any]) -> DotEdge:
    """Edges into and out of a collective take its colour; Send -> Recv is drawn bold. An end is
    a node's attributes, or the op and kind of a folded box.

    The input's edges weigh nothing, so its many long edges do not pull it to one side.
    """
    if tail_data["op"] == "input":
        return DotEdge(quoted(tail), quoted(head), (("weight", "0"),))
    if tail_data["op"] == "send" and head_data["op"] == "recv":
        border = style.LOOKS["send"].border
        return DotEdge(quoted(tail), quoted(head), (("color", quoted(border)), ("penwidth", "2")))
    for data in (tail_data, head_data):
        if data["kind"] == "comm" and data["op"] in style.LOOKS and data["op"] not in PIPELINE:
            return DotEdge(quoted(tail), quoted(head), (("color", quoted(style.LOOKS[data["op"]].border)),))
    return DotEdge(quoted(tail), quoted(head))


def cluster(cluster_id: str, *, title: str, rows: tuple[str, ...], colours: tuple[str, str]) -> DotCluster:
    fill, border = colours
    attrs = (("style", quoted("filled,rounded")), ("fillcolor", quoted(fill)), ("color", quoted(border)))
    return DotCluster(quoted(cluster_id), html(title), tuple(html(row) for row in rows), attrs)


def legend(shown: list[NodeAttrs], *, folded: bool = False) -> DotCluster:
    """A row of sample nodes, ids `legend_<i>`: the shapes and colours of the nodes shown."""
    ops = {data["op"] for data in shown}
    has_route = any(data["kind"] == "route" and data["op"] not in ("input", "output") for data in shown)
    box = cluster("cluster_legend", title="Legend", rows=(), colours=("#ffffff", "#c3cad2"))
    for index, (caption, look) in enumerate(style.legend_entries(ops, has_route, folded=folded)):
        attrs = look_attrs(look) + (("tooltip", quoted(caption)),)
        box.nodes.append(DotNode(quoted(f"legend_{index}"), html(caption), (), attrs))
    return box


def banner(source: str, view: str) -> str:
    return printable(f"{view} of {source}; generated by `par build`, do not edit")


def header(graph_data: GraphAttrs, view: str) -> tuple[str, tuple[str, ...]]:
    """The drawing's title and the facts under it, escaped."""
    rows = [
        model_line(graph_data, drawing=True),
        mesh_line(graph_data, drawing=True),
        f"one forward pass of one microbatch {dims(graph_data['microbatch_shape'])}; shapes are per GPU",
        f"from {graph_data['source']}",
    ]
    return html(f"{graph_data['spec']}: {view}"), tuple(html(row) for row in rows)
