"""Where nodes go in a drawing: a cluster per pipeline stage, per data-parallel replica (dp > 1)
and per GPU, with GPUs kept left to right in rank order and stages stacked in columns.

A stage's label reads "8 layers (0-7)", not "layer 0": readers of DOT files (`par lint`)
take a cluster's "layer N" as the layer of the nodes inside that name none, such as the
pipeline's Send and Recv, which belong to no layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from par.codegen.dot import style
from par.codegen.dot.text import COLUMN, gpus, layer_count, quoted
from par.codegen.dot.view import (
    DotCluster,
    DotEdge,
    DotNode,
    NodeViews,
    attr_list,
    cluster,
    dot_edge,
    dot_node,
    node_view,
)
from par.dsl.checks.deployment import Mesh
from par.dsl.dag.types import Dag, NodeAttrs
from par.dsl.units import ranges

INVISIBLE = (("style", "invis"),)
ANCHOR = (("shape", "point"), ("style", "invis"), ("width", "0"), ("height", "0"))


class ClusterTree:
    """The clusters of one drawing and the nodes placed in them, in the order they were placed."""

    def __init__(self, mesh: Mesh, *, replicas: int | None = None):
        """`replicas`: how many data-parallel replicas are drawn (default: all). A stage's label
        names the GPUs drawn, and how many replicas stand for the rest when some are left out."""
        self.mesh = mesh
        drawn = mesh.dp if replicas is None else replicas
        self.top: list[DotNode] = []
        self.stages: list[DotCluster] = []
        self.replicas: dict[tuple[int, int], DotCluster] = {}
        self.gpus: dict[int, DotCluster] = {}
        self.members: dict[int, list[str]] = {}  # GPU rank -> DAG ids placed in its cluster
        self.views = NodeViews()
        self.columns: dict[int, str] = {}  # GPU rank -> its `column` attributes, joined
        for stage in range(mesh.pp):
            ranks = [rank for d in range(drawn) for rank in mesh.tp_group(dp_rank=d, stage=stage)]
            layers = mesh.stage_layers(stage)  # interleaved: its model chunks' layers
            held = f"{layer_count(len(layers))} ({ranges(layers)})"
            shown = gpus(ranks) if drawn == mesh.dp else f"{gpus(ranks)} (replica 0 of {mesh.dp})"
            rows = (f"{held} · {shown}",)
            stage_cluster = cluster(f"cluster_stage_{stage}", title=f"Pipeline stage {stage}", rows=rows, colours=style.CLUSTER_STAGE)
            self.stages.append(stage_cluster)
            for dp_rank in range(drawn):
                self._replica(stage_cluster, stage, dp_rank)

    def _replica(self, stage_cluster: DotCluster, stage: int, dp_rank: int) -> None:
        mesh = self.mesh
        # Under context parallelism a replica holds every part of the sequence, tp ranks within each.
        group = tuple(rank for c in range(mesh.cp) for rank in mesh.tp_group(dp_rank=dp_rank, stage=stage, cp_rank=c))
        parent = stage_cluster
        if self.mesh.dp > 1:
            title = f"Data-parallel replica {dp_rank}"
            parent = cluster(f"cluster_stage_{stage}_dp_{dp_rank}", title=title, rows=(gpus(group),), colours=style.CLUSTER_REPLICA)
            stage_cluster.clusters.append(parent)
        self.replicas[(stage, dp_rank)] = parent
        for rank in group:
            tp_rank, cp_rank = rank % mesh.tp, mesh.cp_rank(rank)
            row = f"tp rank {tp_rank}" + (f" · cp rank {cp_rank}" if mesh.cp > 1 else "")
            self.gpus[rank] = cluster(f"cluster_gpu_{rank}", title=f"GPU {rank}", rows=(row,), colours=style.CLUSTER_GPU)
            self.members[rank] = []
            parent.clusters.append(self.gpus[rank])

    def column(self, rank: int) -> tuple[tuple[str, str], ...]:
        """`group` of a GPU's nodes: one per (replica, tp rank), so stages line up in columns and
        `dot` avoids crossing the edges inside a GPU."""
        dp_rank, _, tp_rank = self.mesh.coords(rank)
        if self.mesh.cp > 1:
            return (("group", quoted(f"{COLUMN}{dp_rank}_{self.mesh.cp_rank(rank)}_{tp_rank}")),)
        return (("group", quoted(f"{COLUMN}{dp_rank}_{tp_rank}")),)

    def place(self, node_id: str, data: NodeAttrs, *, in_gpu: bool = True) -> None:
        """Adds a DAG node to its GPU's cluster (unless not `in_gpu`), else its replica's (a
        collective), or its stage's (`input`, `output`)."""
        devices = data["devices"]
        if data["op"] in ("input", "output"):
            self.stages[data["stage"]].nodes.append(node_view(node_id, data))
        elif len(devices) == 1 and in_gpu:
            rank = devices[0]
            column = self.columns.get(rank)
            if column is None:
                column = self.columns[rank] = attr_list(self.column(rank))
            self.gpus[rank].nodes.append(self.views.node(node_id, data, extra=column))
            self.members[rank].append(node_id)
        else:
            dp_rank, stage, _ = self.mesh.coords(devices[0])
            self.replicas[(stage, dp_rank)].nodes.append(self.views.node(node_id, data))

    def place_all(self, nodes: Iterable[tuple[str, NodeAttrs]]) -> None:
        """`place` of every (node id, attributes) in order. The nodes of one GPU, most of a DAG,
        are written here as `NodeViews.node` writes them (tests/graphviz/test_dot_views.py holds
        the two equal), each in one f-string and without a call per node: this loop is most of
        a large drawing's time."""
        shared_text, gpus, members, columns = self.views.shared_text, self.gpus, self.members, self.columns
        for node_id, data in nodes:
            devices = data["devices"]
            if len(devices) != 1 or data["op"] in ("input", "output"):
                self.place(node_id, data)
                continue
            rank = devices[0]
            column = columns.get(rank)
            if column is None:
                column = columns[rank] = attr_list(self.column(rank))
            shared = shared_text(data)
            name = node_id if node_id.isidentifier() else quoted(node_id)[1:-1]  # the id as quoted, without its quotes
            layer = data["layer"]
            where = f"GPU {rank}" if layer is None else f"layer {layer} · GPU {rank}"
            gpus[rank].nodes.append(f'"{name}" {shared.opening}{where}{shared.middle}{column}, tooltip="{name}\\n{shared.facts}"]')
            members[rank].append(node_id)

    def add(self, home: DotCluster | None, node: DotNode) -> None:
        """Adds a node that stands for no single DAG node (a folded range of layers)."""
        (self.top if home is None else home.nodes).append(node)

    def roots(self) -> list[DotCluster]:
        return [kept for kept in (stage.pruned() for stage in self.stages) if kept]

    def anchors(self, graph: Dag, *, rep: Callable[[str], str | None] | None = None) -> tuple[list[list[str]], list[DotEdge]]:
        """Invisible nodes that keep each stage's GPU clusters left to right in rank order.

        `dot` may reorder sibling clusters to reduce crossings and ignores ordering edges between
        them. So above each GPU's first node sits an anchor, in its column's group; the anchors
        of a stage form one ordered row, and any other order of the clusters would cross the
        anchor edges, which the group makes expensive. Each anchor sits in its GPU's replica
        cluster (the stage's when dp is 1): anchors in a stage cluster above replica clusters
        make Graphviz 2.43 lose nodes while ordering the ranks and fail with "trouble in
        init_rank" (seen with pp 1, tp >= 2, dp >= 2). `rep` maps a DAG node to the node that
        stands for it in the drawing (None: not drawn). Returns the rows and the edges.
        """
        rep = rep or (lambda node_id: node_id)
        rows: list[list[str]] = []
        edges: list[DotEdge] = []
        for stage in range(len(self.stages)):
            filled = [rank for rank in self.mesh.stage_ranks(stage) if self.members.get(rank)]
            if len(filled) < 2:
                continue
            row = []
            for rank in filled:
                first = self.members[rank][0]
                anchor = quoted(f"anchor_stage_{stage}_gpu{rank}")
                dp_rank = self.mesh.coords(rank)[0]
                self.replicas[(stage, dp_rank)].nodes.append(dot_node(anchor, "", (), ANCHOR + self.column(rank)))
                # Not from `input` into an embedding (which its collective follows in the replica
                # cluster): Graphviz 2.43 fails on those edges the same way (llama_gqa).
                embedding = graph.nodes[first]["op"] == "embedding"
                shown = dict.fromkeys(
                    rep(before) for before in graph.predecessors(first) if not (embedding and before == "input")
                )
                edges.extend(dot_edge(quoted(before), anchor, INVISIBLE) for before in shown if before is not None)
                edges.append(dot_edge(anchor, quoted(first), INVISIBLE))
                row.append(anchor)
            rows.append(row)
        return rows, edges
