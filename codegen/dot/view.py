"""The view-model of a DAG drawing: clusters, nodes and edges whose strings are DOT-ready.

`emit.emit_view` lays these out. Every id and attribute value here is already a DOT quoted
string (`dot_text.quoted`), every title and row already escaped for an HTML-like label
(`dot_text.html`). A cluster's label and attribute list are joined here, and each node and edge
is its whole statement (text, not an object), so that writing the file only strings them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from operator import itemgetter
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
from par.dsl.units import ranges
from par.dsl.units import size as human_bytes

Attrs = tuple[tuple[str, str], ...]


# A node and an edge of a drawing are their DOT statements without the `;`: `"id" [label=<...>, attrs]`
# and `"tail" -> "head" [attrs]`. Text, not objects: a drawing holds as many as the DAG has nodes
# and edges, and strings cost the garbage collector nothing.
DotNode = str
DotEdge = str


def attr_list(attrs: Attrs) -> str:
    """`name=value, name=value`."""
    return ", ".join([f"{name}={value}" for name, value in attrs])


def html_label(title: str, rows: Sequence[str]) -> str:
    """An HTML-like label: the title in bold, the rows under it in small type (both escaped)."""
    text = f"<B>{title}</B>" if title else ""
    if rows:
        text += '<BR/><FONT POINT-SIZE="9">' + "<BR/>".join(rows) + "</FONT>"
    return f"<{text}>"


def dot_node(node_id: str, title: str, rows: Sequence[str], attrs: Attrs) -> DotNode:
    """A node of the drawing: its quoted id, escaped title and rows, and attributes."""
    return node_statement(node_id, html_label(title, rows), attr_list(attrs))


def node_statement(node_id: str, label: str, attrs: str) -> DotNode:
    """A node's statement from its quoted id, its label and its attributes joined ("" for none)."""
    return f"{node_id} [label={label}, {attrs}]" if attrs else f"{node_id} [label={label}]"


def dot_edge(tail: str, head: str, attrs: Attrs = ()) -> DotEdge:
    return edge_statement(tail, head, attr_list(attrs))


def edge_statement(tail: str, head: str, attrs: str = "") -> DotEdge:
    """An edge's statement from its quoted ends and its attributes joined ("" for none)."""
    return f"{tail} -> {head} [{attrs}]" if attrs else f"{tail} -> {head}"


@dataclass(slots=True)
class DotCluster:
    """A cluster of the drawing: its id, label and attributes, its nodes and its clusters."""

    id: str
    label: str  # html_label's
    attrs: str  # attr_list's
    nodes: list[DotNode] = field(default_factory=list)
    clusters: list[DotCluster] = field(default_factory=list)

    def pruned(self) -> DotCluster | None:
        """This cluster without empty sub-clusters; None when nothing is left."""
        self.clusters = [kept for kept in (child.pruned() for child in self.clusters) if kept]
        return self if self.nodes or self.clusters else None


@dataclass(frozen=True, slots=True)
class OutlinePart:
    """One line of the clusters' outline: a cluster opens (with its nodes), or, with `cluster`
    None, the one opened last at this indent ends."""

    indent: str
    cluster: DotCluster | None


def outline(clusters: Sequence[DotCluster], indent: str = "  ") -> list[OutlinePart]:
    """The nested clusters as the template writes them, in order: what it loops over flat."""
    parts = []
    for cluster in clusters:
        parts.append(OutlinePart(indent, cluster))
        parts += outline(cluster.clusters, indent + "  ")
        parts.append(OutlinePart(indent, None))
    return parts


@dataclass(slots=True)
class DotGraph:
    """The whole drawing as the template lays it out."""

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

    @property
    def outline(self) -> list[OutlinePart]:
        return outline(self.clusters)


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
    return dot_node(quoted(node_id), html(node_title(data)), [html(row) for row in node_rows(data)], attrs)


class NodeViews:
    """`node_view` for the many nodes of one drawing.

    The nodes of one step of the layer differ only in id, layer and GPUs: what they share (the
    title, the shapes and bytes, the look, the tooltip's facts) is escaped and joined once per
    step, and the rest is spliced in, giving exactly `node_view`'s text."""

    def __init__(self) -> None:
        self.shared: dict[tuple, _Shared] = {}

    def node(self, node_id: str, data: NodeAttrs, *, extra: str = "") -> DotNode:
        """`node_view(node_id, data, extra=...)`, with `extra` joined as `attr_list` joins it."""
        shared = self.shared_text(data)
        devices = data["devices"]
        where = f"GPU {devices[0]}" if len(devices) == 1 else f"GPUs {ranges(devices)}"  # digits: nothing to escape
        if data["layer"] is not None:
            where = f"layer {data['layer']} · {where}"
        quoted_id = quoted(node_id)
        # node_statement's text: the label, then the look, `extra` and the tooltip, joined.
        extra = f"{extra}, " if extra else ""
        return f'{quoted_id} {shared.opening}{where}{shared.middle}{extra}tooltip="{quoted_id[1:-1]}\\n{shared.facts}"]'


    def shared_text(self, data: NodeAttrs) -> _Shared:
        """What the node shows alike with the other nodes of its step, escaped once per step."""
        get = data.get
        key = (_SHARED_KEYS(data), get("style"), get("in_placement"), get("out_placement"), get("reason"), get("peer"))
        try:
            shared = self.shared.get(key)
            if shared is None:
                shared = self.shared[key] = _shared(data)
        except TypeError:  # shapes as lists (a DAG read back from JSON): nothing to share
            shared = _shared(data)
        return shared


# What `_shared` reads of a node that every node has (the rest may be absent): taken in one call.
_SHARED_KEYS = itemgetter("op", "name", "kind", "in_shape", "out_shape", "flops", "params", "src", "wire_bytes", "bytes")


@dataclass(frozen=True, slots=True)
class _Shared:
    """What the nodes of one step show alike, escaped: `node_view`'s text around the id, layer and GPUs."""

    opening: str  # the statement up to the GPUs: `[label=<` and the title
    middle: str  # after the GPUs: the rest of the label, and the look's attributes with their comma
    facts: str  # the tooltip's lines after the id, joined


def _shared(data: NodeAttrs) -> _Shared:
    rows = [html(row) for row in node_rows({**data, "layer": None, "devices": [0]})]
    gpu = html(gpus([0]))
    look = style.look_of(data)
    looks = attr_list(() if look == style.COMPUTE else look_attrs(look))
    return _Shared(
        opening=f'[label=<<B>{html(node_title(data))}</B><BR/><FONT POINT-SIZE="9">',
        middle=f"{rows[0].removeprefix(gpu)}<BR/>{'<BR/>'.join(rows[1:])}</FONT>>, " + (f"{looks}, " if looks else ""),
        facts=tooltip("", data)[1:-1].removeprefix("\\n"),
    )


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
    return edge_statement(quoted(tail), quoted(head), edge_attrs(tail_data["op"], tail_data["kind"], head_data["op"], head_data["kind"]))


@cache
def edge_attrs(tail_op: str, tail_kind: str, head_op: str, head_kind: str) -> str:
    """The attributes of an edge between nodes of these ops and kinds, joined (see `edge_view`)."""
    if tail_op == "input":
        return attr_list((("weight", "0"),))
    if tail_op == "send" and head_op == "recv":
        return attr_list((("color", quoted(style.LOOKS["send"].border)), ("penwidth", "2")))
    # A KV cache is ranked by the attention that reads it, not by what it reads: Graphviz 2.43
    # fails with "trouble in init_rank" on a collective feeding both the cache and its attention.
    free = (("constraint", "false"),) if head_op == "kv_append" else ()
    for op, kind in ((tail_op, tail_kind), (head_op, head_kind)):
        if kind == "comm" and op in style.LOOKS and op not in PIPELINE:
            return attr_list((("color", quoted(style.LOOKS[op].border)), *free))
    return attr_list(free) if free else ""


def cluster(cluster_id: str, *, title: str, rows: tuple[str, ...], colours: tuple[str, str]) -> DotCluster:
    fill, border = colours
    attrs = (("style", quoted("filled,rounded")), ("fillcolor", quoted(fill)), ("color", quoted(border)))
    return DotCluster(quoted(cluster_id), html_label(html(title), [html(row) for row in rows]), attr_list(attrs))


def legend(shown: list[NodeAttrs], *, folded: bool = False) -> DotCluster:
    """A row of sample nodes, ids `legend_<i>`: the shapes and colours of the nodes shown."""
    ops = {data["op"] for data in shown}
    has_route = any(data["kind"] == "route" and data["op"] not in ("input", "output") for data in shown)
    box = cluster("cluster_legend", title="Legend", rows=(), colours=("#ffffff", "#c3cad2"))
    for index, (caption, look) in enumerate(style.legend_entries(ops, has_route, folded=folded)):
        attrs = look_attrs(look) + (("tooltip", quoted(caption)),)
        box.nodes.append(dot_node(legend_id(index), html(caption), (), attrs))
    return box


def legend_id(index: int) -> str:
    """The quoted id of the legend's node `index`."""
    return quoted(f"legend_{index}")


def banner(source: str, view: str) -> str:
    return printable(f"{view} of {source}; generated by `par build`, do not edit")


def _pass(graph_data: GraphAttrs) -> str:
    """What the DAG computes: a training forward pass, or one phase of serving."""
    serve = graph_data.get("serve")
    if serve is None:
        return "one forward pass of one microbatch"
    what = "the prefill" if serve["phase"] == "prefill" else "one decode step"
    return f"{what} (context {serve['context']}, KV cache in {serve['kv_dtype']}) of one microbatch of requests"


def header(graph_data: GraphAttrs, view: str) -> tuple[str, tuple[str, ...]]:
    """The drawing's title and the facts under it, escaped."""
    rows = [
        model_line(graph_data, drawing=True),
        mesh_line(graph_data, drawing=True),
        f"{_pass(graph_data)} {dims(graph_data['microbatch_shape'])}; shapes are per GPU",
        f"from {graph_data['source']}",
    ]
    return html(f"{graph_data['spec']}: {view}"), tuple(html(row) for row in rows)
