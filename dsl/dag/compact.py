"""The DAG as expansion writes it and the validator reads it: a column per node attribute that
varies from node to node, and one attribute dict shared by the nodes of one step.

A step stamped on the ranks of a tensor-parallel group makes nodes that differ only in id,
layer, stage and devices: they share the step's attribute dict (its template) here, and get a
dict of their own only in `to_dag`, the networkx-shaped `Dag` the emitters read. Their ids are
not written either: `ids.compute_id` of the columns gives it (`name`). Validating
a million-node DAG then costs what the checks cost, not what building a million dicts, strings
and adjacency dicts does, and `par check` builds no `Dag` at all.

Nodes are numbered in insertion order; an edge is `(the other node's number, its attribute
dict)` in the adjacency lists of both ends, in the order the edges were added, so that `to_dag`
writes exactly the dicts that adding the same nodes and edges to a `Dag` writes. Expansion
refers to a node by its number (`NodeRef`), or by its id where it wrote one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from par.dsl.dag import ids as node_ids
from par.dsl.dag.types import Dag, EdgeAttrs, NodeAttrs

Adjacency = list[list[tuple[int, EdgeAttrs]]]
NodeRef = int | str  # a node's number, or its id
Nodes = Sequence[NodeRef]  # the nodes giving a value, one per rank of a group (a collective's repeated)


class CompactDag:
    def __init__(self, graph: dict[str, Any]) -> None:
        self.graph = graph  # the graph's attributes: one dict, shared with what `to_dag` builds
        self.ids: list[str | None] = []  # None: a stamped node's, which `name` spells out
        self.index: dict[str, int] = {}  # the written ids; `find` adds the others when asked
        self._indexed = 0  # how many nodes `find` has put in `index` all of
        self.attrs: list[NodeAttrs] = []  # a node's own dict, or its step's template
        self.layer: list[int | None] = []
        self.stage: list[int] = []
        self.devices: list[list[int]] = []
        self.pred: Adjacency = []
        self.succ: Adjacency = []
        self.templates: set[int] = set()  # ids of the shared dicts: `to_dag` copies those
        self._dag: Dag | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def built(self) -> bool:
        """Whether `to_dag` has built the networkx-shaped DAG (or this was made from one)."""
        return self._dag is not None

    def add(self, node: str, data: NodeAttrs) -> int:
        """A node with a dict of its own; its layer, stage and devices are the dict's."""
        assert id(data) not in self.templates, "a template is shared through `stamp`, never added as a node"
        if node in self.index:
            raise AssertionError(f"expansion produced the node id {node} twice")
        number = len(self.ids)
        self.ids.append(node)
        self.index[node] = number
        self.attrs.append(data)
        self.layer.append(data.get("layer"))
        self.stage.append(data.get("stage", 0))
        self.devices.append(data.get("devices") or [])
        self.pred.append([])
        self.succ.append([])
        return number

    def template(self, data: NodeAttrs) -> NodeAttrs:
        """Registers `data` as a template that nodes share (`stamp`); it names them by its `name`."""
        self.templates.add(id(data))
        return data

    def stamp(self, template: NodeAttrs, layer: int, stage: int, devices: Sequence[list[int]]) -> range:
        """A node per devices list (one rank each), sharing `template` (registered); returns their numbers."""
        first = len(self.ids)
        count = len(devices)
        self.ids += [None] * count
        self.attrs += [template] * count
        self.layer += [layer] * count
        self.stage += [stage] * count
        self.devices += devices
        self.pred += [[] for _ in devices]
        self.succ += [[] for _ in devices]
        return range(first, first + count)

    def name(self, number: int) -> str:
        """The node's id."""
        node = self.ids[number]
        if node is None:  # stamped: a compute step of a layer, on one rank
            layer = self.layer[number]
            assert layer is not None, "only a layer's steps are stamped"
            return node_ids.compute_id(layer, self.attrs[number]["name"], self.devices[number][0])
        return node

    def names(self) -> list[str]:
        """Every node's id, in order."""
        return [self.name(number) if node is None else node for number, node in enumerate(self.ids)]

    def find(self, node: str) -> int | None:
        """The number of the node with this id, or None."""
        number = self.index.get(node)
        if number is None and self._indexed < len(self.ids):  # the first time an id is not found: index them all
            for number in range(self._indexed, len(self.ids)):
                self.index[self.name(number)] = number
            self._indexed = len(self.ids)
            number = self.index.get(node)
        return number

    def number(self, node: NodeRef) -> int:
        """The node's number, from its number or its id."""
        if isinstance(node, int):
            return node
        number = self.find(node)
        if number is None:
            raise KeyError(f"the DAG has no node {node!r}")
        return number

    def add_edge(self, source: NodeRef, target: NodeRef, data: EdgeAttrs) -> None:
        s, t = self.number(source), self.number(target)
        self.succ[s].append((t, data))
        self.pred[t].append((s, data))

    def own(self, node: NodeRef) -> NodeAttrs:
        """The node's attribute dict, made its own first if it shares its step's: for writing."""
        number = self.number(node)
        data = self.attrs[number]
        if id(data) in self.templates:
            data = self.attrs[number] = self._materialized(number)
        return data

    def data(self, number: int) -> NodeAttrs:
        """The node's attributes as one dict: its own, or a copy of its step's with its layer,
        stage and devices (for reading a few nodes whole; the validator reads the columns)."""
        data = self.attrs[number]
        return self._materialized(number) if id(data) in self.templates else data

    def _materialized(self, number: int) -> NodeAttrs:
        data = self.attrs[number].copy()
        data["layer"], data["stage"], data["devices"] = self.layer[number], self.stage[number], self.devices[number]
        return data

    def to_dag(self) -> Dag:
        """The networkx-shaped DAG, built once: what adding these nodes and edges in turn builds."""
        if self._dag is not None:
            return self._dag
        dag = Dag()
        dag.graph = self.graph
        node_map, succ, pred = dag._node, dag._succ, dag._pred
        attrs, templates = self.attrs, self.templates
        layers, stages, devices = self.layer, self.stage, self.devices
        ids = self.names()
        for number, node in enumerate(ids):
            data = attrs[number]
            if id(data) in templates:
                data = data.copy()
                data["layer"], data["stage"], data["devices"] = layers[number], stages[number], devices[number]
            node_map[node] = data
        if len(node_map) != len(ids):
            raise AssertionError("expansion produced a node id twice")
        for adjacency, lists in ((succ, self.succ), (pred, self.pred)):
            for node, edges in zip(ids, lists, strict=True):
                if len(edges) == 1:  # most nodes: a dict display, not a comprehension's call
                    other, edge = edges[0]
                    adjacency[node] = {ids[other]: edge}
                else:
                    adjacency[node] = {ids[other]: edge for other, edge in edges}
        self._dag = dag
        return dag

    @classmethod
    def of(cls, dag: Dag) -> CompactDag:
        """A DAG built some other way (by hand, by a test), in columns: every node its own dict."""
        compact = cls(dag.graph)
        for node, data in dag._node.items():
            compact.add(node, data)
        index = compact.index
        for node, targets in dag._succ.items():
            compact.succ[index[node]] = [(index[target], edge) for target, edge in targets.items()]
        for node, sources in dag._pred.items():
            compact.pred[index[node]] = [(index[source], edge) for source, edge in sources.items()]
        compact._dag = dag
        return compact
