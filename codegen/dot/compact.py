"""The compact drawing: one layer in full, every other run of layers of a stage folded into one box.

Only data-parallel replica 0 is drawn (the others are copies of it); the pipeline's Sends and
Recvs sit in their stage, in rank order, outside the GPU clusters of the expanded layer. Each DAG node is drawn
as itself, as the folded box of its layer range, or not at all; the edges are those of the
DAG between what stands for their ends (the quotient graph), so the pipeline's Send/Recv
and every edge in and out of the expanded layer are the DAG's own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from operator import itemgetter

from par.codegen.dot import style
from par.codegen.dot.clusters import ClusterTree
from par.codegen.dot.text import dims, gpus, html, layer_count, layer_span, quoted
from par.codegen.dot.view import DotEdge, DotNode, dot_node, edge_view, look_attrs
from par.dsl.checks.deployment import Mesh
from par.dsl.compiler import Compiled
from par.dsl.dag.types import Dag, NodeAttrs
from par.dsl.registry.collectives import PIPELINE
from par.dsl.units import size as human_bytes

FOLDED_DATA = {"op": "folded", "kind": "folded"}  # what edge styling sees of a folded box


@dataclass(frozen=True, slots=True)
class Fold:
    """Consecutive layers of one stage drawn as one box."""

    id: str
    stage: int
    first: int
    last: int


@dataclass
class CompactLayout:
    """What the compact view draws: its clusters, edges and nodes, and which node stands for each."""

    tree: ClusterTree
    edges: list[DotEdge]
    nodes: list[str]  # DAG ids drawn as themselves
    rep: Callable[[str], str | None]  # DAG id -> the id drawn for it, or None: not drawn
    folded: bool
    rows: list[list[str]]  # Send and Recv rows, left to right in rank order


def folds(mesh: Mesh, *, expanded: int | Collection[int], starts: Collection[int] = ()) -> list[Fold]:
    """The runs of layers of each stage other than the `expanded` ones, in order; a run also ends
    before each layer of `starts` (where another block begins: its layers are drawn apart)."""
    shown = {expanded} if isinstance(expanded, int) else set(expanded)
    runs: list[Fold] = []
    for chunk, (first, last) in enumerate(mesh.stages):
        stage = mesh.chunk_stage(chunk)  # interleaved: the stage of each model chunk
        run: list[int] = []
        for layer in [*range(first, last + 1), None]:
            if run and (layer is None or layer in shown or layer in starts):
                runs.append(Fold(f"folded_layers_{run[0]}_{run[-1]}", stage, run[0], run[-1]))
                run = []
            if layer is not None and layer not in shown:
                run.append(layer)
    return runs


def expanded_layers(compiled: Compiled, layer: int) -> tuple[int, ...]:
    """The layers drawn in full: `layer`, or with a block per range of layers the first of each range."""
    if not compiled.layer_programs:
        return (layer,)
    return tuple(first for first, _, _ in compiled.layer_programs)


def compact_layout(compiled: Compiled, *, layer: int) -> CompactLayout:
    graph, mesh = compiled.graph, compiled.deployment.mesh
    shown = expanded_layers(compiled, layer)
    ranges = folds(mesh, expanded=shown, starts=[first for first, _, _ in compiled.layer_programs])
    fold_of = {number: fold.id for fold in ranges for number in range(fold.first, fold.last + 1)}  # layer -> its box
    first_replica = {rank for rank in range(mesh.world) if mesh.coords(rank)[0] == 0}  # asked of every node: once per rank

    tree = ClusterTree(mesh, replicas=1)
    drawn_for: dict[str, str | None] = {}  # DAG id -> the id drawn for it, or None: not drawn
    drawn: list[str] = []
    members: dict[str, list[NodeAttrs]] = {fold.id: [] for fold in ranges}
    pipeline: dict[tuple[int, int, str], list[str]] = {}  # (stage, chunk, send | recv) -> ids, in rank order
    # One pass over the nodes, in the DAG's order, reading each node's dict once: most nodes are
    # folded, and a pass more over the 236,000 dicts of a large DAG costs a tenth of a second.
    for node_id, data in graph._node.items():
        if data["op"] in ("input", "output"):
            target: str | None = node_id
        elif data["devices"][0] not in first_replica:
            target = None
        elif data["layer"] is None or data["layer"] in shown:
            target = node_id
        else:
            target = fold_of[data["layer"]]
        drawn_for[node_id] = target
        if target == node_id:
            drawn.append(node_id)
            boundary = data["op"] in PIPELINE and "ring" not in data  # a ring transfer stays on its GPU
            tree.place(node_id, data, in_gpu=not boundary)
            if boundary:
                pipeline.setdefault((data["stage"], data.get("chunk", 0), data["op"]), []).append(quoted(node_id))
        elif target is not None:
            members[target].append(data)
    for fold in ranges:
        tree.add(tree.replicas[(fold.stage, 0)], folded_node(fold, members=members[fold.id], compiled=compiled))
    edges = quotient_edges(graph, rep=drawn_for)
    rows = [row for _, row in sorted(pipeline.items()) if len(row) > 1]
    return CompactLayout(tree, edges, drawn, drawn_for.__getitem__, folded=bool(ranges), rows=rows)


def quotient_edges(graph: Dag, *, rep: Mapping[str, str | None]) -> list[DotEdge]:
    """One edge per pair of drawn ends that some DAG edge connects, in DAG order; `rep`: each
    DAG id -> the id drawn for it, or None."""
    pairs: dict[tuple[str, str], None] = {}
    for tail, heads in graph._succ.items():  # graph.edges' order
        drawn_tail = rep[tail]
        if drawn_tail is None:
            continue
        for head in heads:
            drawn_head = rep[head]
            if drawn_head is not None and drawn_tail != drawn_head:
                pairs[(drawn_tail, drawn_head)] = None
    edges = []
    for tail, head in pairs:
        tail_data = graph.nodes[tail] if tail in graph else FOLDED_DATA
        head_data = graph.nodes[head] if head in graph else FOLDED_DATA
        edges.append(edge_view(tail, head, tail_data=tail_data, head_data=head_data))
    return edges


def _drawn(compiled: Compiled, fold: Fold) -> str:
    """The layer drawn in full that the folded ones are like."""
    for first, last, _ in compiled.layer_programs:
        if first <= fold.first <= last:
            return f"layer {first}"
    return "the one drawn"


def folded_node(fold: Fold, *, members: list[NodeAttrs], compiled: Compiled) -> DotNode:
    """A box for a range of layers: what runs there, counted, and what it sends."""
    mesh = compiled.deployment.mesh
    count = fold.last - fold.first + 1
    kinds = Counter(map(itemgetter("kind"), members))
    comms = [data for data in members if data["kind"] == "comm"]
    collectives = Counter(style.display_name(data["op"]) for data in comms)
    sent = sum(data["wire_bytes"] for data in comms)
    stream = dims(compiled.program.stream_local)
    rows = [
        f"{gpus(mesh.tp_group(dp_rank=0, stage=fold.stage))} · {layer_count(count)} like {_drawn(compiled, fold)}",
        f"{kinds['compute']} computations" + (f", {kinds['route']} slices" if kinds["route"] else ""),
    ]
    if collectives:
        listed = ", ".join(f"{number} {name}" for name, number in sorted(collectives.items()))
        rows.append(f"{listed}: {human_bytes(sent)} sent/rank")
    rows += [f"Input: {stream}", f"Output: {stream}"]
    title = f"{layer_span(fold.first, fold.last).capitalize()} (folded)"
    tooltip = quoted(f"{fold.id}: {layer_count(count)} folded; every layer has the steps of the layer drawn in full")
    attrs = look_attrs(style.FOLDED) + (("tooltip", tooltip),)
    return dot_node(quoted(fold.id), html(title), [html(row) for row in rows], attrs)
