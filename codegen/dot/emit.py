"""dag.dot (every layer on every GPU) and dag.compact.dot (one layer in full, the rest folded)."""

from __future__ import annotations

from collections.abc import Sequence

from par.codegen.dot.clusters import ClusterTree
from par.codegen.dot.compact import compact_layout, expanded_layers
from par.codegen.dot.text import quoted
from par.codegen.dot.view import (
    EDGE_DEFAULTS,
    NODE_DEFAULTS,
    DotEdge,
    DotGraph,
    banner,
    edge_attrs,
    header,
    legend,
    legend_id,
)
from par.codegen.templating import render
from par.dsl.compiler import Compiled
from par.dsl.dag.types import Dag, NodeAttrs, graph_attrs

GRAPH_DEFAULTS = (
    ("rankdir", "TB"),
    ("newrank", "true"),
    ("fontname", quoted("Helvetica,Arial,sans-serif")),
    ("fontsize", "12"),
    ("labelloc", "t"),
    ("labeljust", "l"),
    ("nodesep", "0.2"),
    ("ranksep", "0.3"),
)
# Above this many nodes `dot`'s x-coordinate pass (network simplex) grows quadratic; it is then
# stopped after about POSITION_ITERATIONS iterations (docs/graphviz.md: Performance).
LARGE_DRAWING = 2000
POSITION_ITERATIONS = 1500


def emit_dot(compiled: Compiled) -> str:
    return emit_view(full_view(compiled))


def emit_compact_dot(compiled: Compiled) -> str:
    return emit_view(compact_view(compiled))


def emit_view(view: DotGraph) -> str:
    """The DOT text of a drawing's view-model."""
    return render("dag.dot.jinja", graph=view)


def layout_attrs(node_count: int) -> tuple[tuple[str, str], ...]:
    """Graph attributes for a drawing of `node_count` nodes: the defaults, plus `nslimit` when large."""
    if node_count <= LARGE_DRAWING:
        return GRAPH_DEFAULTS
    return GRAPH_DEFAULTS + (("nslimit", f"{POSITION_ITERATIONS / node_count:.4f}"),)


def full_view(compiled: Compiled) -> DotGraph:
    """Every node of the DAG: a cluster per pipeline stage, per data-parallel replica, per GPU."""
    graph = compiled.graph
    tree = ClusterTree(compiled.deployment.mesh)
    tree.place_all(graph.nodes(data=True))
    return _drawing(graph, tree, full_edges(graph), list(graph._node.values()), view="full DAG", folded=False)


def full_edges(graph: Dag) -> list[DotEdge]:
    """What edge_view makes of every edge, in graph.edges' order. An edge's attributes depend only
    on its ends' op and kind, numbered here, so that each edge looks its text up in a table
    instead of hashing the four strings; an id of letters, digits and _ (every id the compiler
    makes) is quoted as it is, with no look-up."""
    kinds: dict[tuple[str, str], int] = {}
    kind_of = {node_id: kinds.setdefault((data["op"], data["kind"]), len(kinds)) for node_id, data in graph._node.items()}
    ends = [[_edge_end(*tail, *head) for head in kinds] for tail in kinds]
    edges: list[DotEdge] = []
    add = edges.append  # a loop, not a comprehension per tail: most tails have one or two heads
    if all(map(str.isidentifier, graph._node)):
        for tail, heads in graph._succ.items():
            arrow, after = f'"{tail}" -> "', ends[kind_of[tail]]
            for head in heads:
                add(f'{arrow}{head}"{after[kind_of[head]]}')
    else:
        ids = {node_id: quoted(node_id) for node_id in graph._node}
        for tail, heads in graph._succ.items():
            arrow, after = f"{ids[tail]} -> ", ends[kind_of[tail]]
            for head in heads:
                add(f"{arrow}{ids[head]}{after[kind_of[head]]}")
    return edges


def _edge_end(tail_op: str, tail_kind: str, head_op: str, head_kind: str) -> str:
    """edge_statement's text after the head, for an edge between nodes of these ops and kinds."""
    attrs = edge_attrs(tail_op, tail_kind, head_op, head_kind)
    return f" [{attrs}]" if attrs else ""


def compact_view(compiled: Compiled, *, layer: int = 0) -> DotGraph:
    """Layer `layer` of data-parallel replica 0 in full; every other run of layers of a stage folded."""
    graph = compiled.graph
    layout = compact_layout(compiled, layer=layer)
    shown = [graph.nodes[node_id] for node_id in layout.nodes]
    dp = compiled.deployment.mesh.dp
    full = expanded_layers(compiled, layer)
    drawn = f"layer {layer} in full" if len(full) == 1 else f"layers {', '.join(map(str, full))} in full, one of each block"
    view = f"compact view ({drawn}, other layers folded" + (f"; data-parallel replica 0 of {dp})" if dp > 1 else ")")
    return _drawing(graph, layout.tree, layout.edges, shown, view=view, folded=layout.folded, rep=layout.rep, ordered=layout.rows)


def _drawing(graph: Dag, tree: ClusterTree, edges: Sequence[DotEdge], shown: list[NodeAttrs], *, view: str, folded: bool, rep=None, ordered=()) -> DotGraph:
    anchor_rows, anchor_edges = tree.anchors(graph, rep=rep)
    title, rows = header(graph_attrs(graph), view)
    key = legend(shown, folded=folded)
    return DotGraph(
        name=quoted(graph_attrs(graph)["spec"]),
        banner=banner(graph_attrs(graph)["source"], view),
        title=title,
        rows=rows,
        graph_attrs=layout_attrs(len(shown)),
        node_attrs=NODE_DEFAULTS,
        edge_attrs=EDGE_DEFAULTS,
        nodes=tree.top,
        clusters=tree.roots() + [key],
        edges=list(edges) + anchor_edges,
        rows_in_order=anchor_rows + list(ordered) + [[legend_id(index) for index in range(len(key.nodes))]],
    )
