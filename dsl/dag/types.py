"""The types of the DAG (README: The DAG): what a node, an edge and the graph carry, the
enumerations they are made of, and the container that holds them (`Dag`). Expansion writes these attributes and every reader of the DAG
reads them; tests hold the keys to what `expand` writes and the op names to the registry.

No `from __future__ import annotations` here: TypedDict reads `NotRequired` from evaluated
annotations, and the tests compare its required and optional keys with real nodes.
"""

from collections.abc import Iterable, Iterator
from typing import Any, Literal, NotRequired, TypedDict, cast, overload

Kind = Literal["compute", "comm", "route"]
# registry.ops: OPS (with the mixture-of-experts ops of registry.moe), then MODEL_OPS (the model's
# ends: embedding, positions, the vocabulary-parallel loss; context parallelism's ring steps;
# serving: the KV cache, the last position and sampling)
ComputeOp = Literal[
    "layernorm", "rmsnorm", "linear", "attention", "rope", "gelu", "silu", "add", "mul",
    "router", "permute", "expert_linear", "unpermute",
    "embedding", "positions", "loss_max", "loss_sum", "loss", "ring_attention", "attn_merge",
    "kv_append", "last_position", "sample",
]
CollectiveOp = Literal[
    "allgather", "allreduce", "reducescatter", "alltoall", "dispatch", "combine", "send", "recv", "slice"
]  # registry.collectives
IoOp = Literal["input", "output"]
OpName = ComputeOp | CollectiveOp | IoOp
PlacementKind = Literal["R", "P", "S"]  # replicated, partial sum, split
# How nodes, drawings and reports write a Placement; E(...): routed over the expert-parallel group.
PlacementText = Literal["R", "P", "S(seq)", "S(-1)", "E(R)", "E(P)", "E(S(seq))", "E(S(-1))"]
Dtype = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["gpipe", "1f1b", "interleaved"]
Recompute = Literal["none", "selective", "full"]
Severity = Literal["error", "warning", "note"]
Shape = tuple[int, ...]


class NodeAttrs(TypedDict):
    """A node: one op on one device, one collective instance, a send, a recv, input or output."""

    op: OpName
    kind: Kind
    name: str  # the node-id component: `qkv`, `allgather_qkv`, `send`
    layer: int | None  # None: input, output, input slices, send and recv
    stage: int
    devices: list[int]
    in_shape: Shape  # local, per device
    out_shape: Shape
    dtype: Dtype
    flops: int  # forward, per device
    params: int  # per device
    bytes: int  # of the input, per device
    wire_bytes: int | float  # sent by each rank
    src: str  # the spec span behind it: `file:line:col`
    in_placement: NotRequired[PlacementText]  # on the tensor-parallel axis; not on input and output
    out_placement: NotRequired[PlacementText]
    arity: NotRequired[int]  # compute nodes and slices: how many operands
    style: NotRequired[str]  # linear: column | row | replicated
    bias: NotRequired[bool]  # linear: it adds a bias (true only; absent: none)
    reason: NotRequired[str]  # collectives and slices: why the node exists
    inserted: NotRequired[bool]  # collectives: the compiler added it, the spec did not write it
    peer: NotRequired[int]  # send and recv: the rank on the other side
    chunk: NotRequired[int]  # interleaved send and recv: the model chunk it leaves (send) or enters (recv)
    # The collective the training backward issues on the gradient of the output (par.dsl.lowering.backward).
    backward: NotRequired[CollectiveOp]
    backward_wire_bytes: NotRequired[int | float]
    backward_reason: NotRequired[str]  # why an AllGather needs no ReduceScatter in backward
    # Per operand, where operands differ (the loss reads the logits and the largest logit;
    # unpermute, the experts' results and the router's scores).
    operand_shapes: NotRequired[list[Shape]]
    operand_placements: NotRequired[list[PlacementText]]
    tied: NotRequired[bool]  # the LM head's own copy of the embedding matrix (tie_embeddings, pp > 1)
    after: NotRequired[str]  # collectives: the one issued before it that its data does not depend on (program order)
    clone: NotRequired[bool]  # a local slice that copies its part, so that its source is freed (lowering.copies)
    wire_bytes_worst: NotRequired[int | float]  # token routing: at the capacity factor's worst case
    # Context parallelism (par.dsl.dag.ring): the ring a transfer or step belongs to and its step.
    ring: NotRequired[str]
    ring_step: NotRequired[int]
    # Activation recomputation: the backward runs the node's forward again (true only; absent: kept).
    recompute: NotRequired[bool]


class EdgeAttrs(TypedDict):
    operands: tuple[int, ...]  # which operands of the target the source's tensor feeds


class ModelAttrs(TypedDict):
    name: str
    block: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int | None
    padded_vocab: int | None  # a multiple of tp
    tie_embeddings: bool
    positions: str
    max_positions: int | None
    final_norm: str
    batch: int
    seq: int
    dtype: Dtype
    moe: NotRequired["ExpertAttrs"]  # mixture-of-experts models only
    block_layers: NotRequired[list["BlockLayers"]]  # a model with a block per range of layers


class BlockLayers(TypedDict):
    first: int
    last: int
    block: str


class ExpertAttrs(TypedDict):
    experts: int
    top_k: int
    expert_ffn: int
    shared_experts: int
    router: str
    router_norm: bool
    capacity_factor: float


class MeshAttrs(TypedDict):
    tp: int
    pp: int
    dp: int
    world: int
    microbatches: int
    stages: list[list[int]]  # per stage (interleaved: per model chunk): [first layer, last layer]
    schedule: Schedule
    sequence_parallel: bool
    grad_dtype: Dtype  # what gradients are accumulated and reduced in
    ep: NotRequired[int]  # expert-parallel degree (docs/language.md); absent when 1
    cp: NotRequired[int]  # context-parallel degree (docs/language.md); absent when 1
    cp_attention: NotRequired[str]  # ring | allgather; absent when cp is 1
    recompute: NotRequired[Recompute]  # selective | full; absent when none
    chunks: NotRequired[int]  # model chunks per stage (schedule interleaved); absent when 1
    zero: NotRequired[int]  # ZeRO stage 1..3: what data parallelism shards (docs/language.md); absent when 0


class GraphAttrs(TypedDict):
    spec: str
    source: str
    model: ModelAttrs
    mesh: MeshAttrs
    layers: int
    stream: PlacementText
    microbatch_shape: list[int]
    strict: bool
    serve: NotRequired["ServeAttrs"]  # the DAGs of a serving spec: which phase, and the serving settings


class ServeAttrs(TypedDict):
    phase: Literal["prefill", "decode"]
    prompt: int
    generate: int
    context: int  # positions each sequence's KV cache holds: prompt + generate
    kv_dtype: Dtype


def graph_attrs(graph: "Dag") -> GraphAttrs:
    """The graph's attributes, typed (`graph.graph` is a plain dict)."""
    return cast(GraphAttrs, graph.graph)


# The container -------------------------------------------------------------------------------
#
# The DAG's container: a directed graph with the part of networkx's DiGraph interface par uses.
#
# networkx costs about 0.2 s to import, most of `par check`'s start-up, and a compiled DAG needs
# none of its algorithms: so the DAG is this small class, laid out as networkx lays out a DiGraph
# (`_node`: id -> attributes; `_succ`, `_pred`: id -> neighbour -> edge attributes, the same dict
# on both sides; everything in insertion order), which expansion fills and the validator reads
# directly. Iteration orders are networkx's, so every artifact is byte for byte what a DiGraph
# gives. `nx.DiGraph(dag)` converts it where an algorithm of networkx is wanted (tests).
#
# A compiled DAG's nodes of one step share their devices lists and their edges' attribute dicts
# (expansion's memory): change them by assignment, or work on `copy()`, which shares nothing.


class Dag:
    def __init__(self, **attrs: Any) -> None:
        self.graph: dict[str, Any] = dict(attrs)
        self._node: dict[str, NodeAttrs] = {}
        self._succ: dict[str, dict[str, EdgeAttrs]] = {}
        self._pred: dict[str, dict[str, EdgeAttrs]] = {}
        self._nodes = NodeView(self._node)  # `nodes` is read once per node by some readers: one view

    # networkx's names for the adjacency (what `nx.DiGraph(dag)` reads)
    @property
    def adj(self) -> dict[str, dict[str, EdgeAttrs]]:
        return self._succ

    succ = adj

    @property
    def pred(self) -> dict[str, dict[str, EdgeAttrs]]:
        return self._pred

    def is_directed(self) -> bool:
        return True

    def is_multigraph(self) -> bool:
        return False

    # nodes
    @property
    def nodes(self) -> "NodeView":
        return self._nodes

    def __contains__(self, node: object) -> bool:
        return node in self._node

    def __iter__(self) -> Iterator[str]:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def number_of_nodes(self) -> int:
        return len(self._node)

    def has_node(self, node: str) -> bool:
        return node in self._node

    def add_node(self, node: str, **attrs: Any) -> None:
        if node not in self._node:
            self._succ[node], self._pred[node] = {}, {}
            self._node[node] = attrs  # type: ignore[assignment]  # the caller gives a node's attributes
        else:
            self._node[node].update(attrs)  # type: ignore[typeddict-item]

    def remove_node(self, node: str) -> None:
        if node not in self._node:
            raise KeyError(f"the DAG has no node {node!r}")
        for target in self._succ.pop(node):
            del self._pred[target][node]
        for source in self._pred.pop(node):
            del self._succ[source][node]
        del self._node[node]

    def remove_nodes_from(self, nodes: Iterable[str]) -> None:
        for node in list(nodes):
            if node in self._node:
                self.remove_node(node)

    def predecessors(self, node: str) -> Iterator[str]:
        return iter(self._pred[node])

    def successors(self, node: str) -> Iterator[str]:
        return iter(self._succ[node])

    def in_degree(self, node: str) -> int:
        return len(self._pred[node])

    def out_degree(self, node: str) -> int:
        return len(self._succ[node])

    # edges
    @property
    def edges(self) -> "EdgeView":
        return EdgeView(self._succ)

    def in_edges(self, node: str, data: bool = False) -> list[Any]:
        """(source, node) or, with data, (source, node, attributes) for each edge into `node`."""
        if data:
            return [(source, node, attrs) for source, attrs in self._pred[node].items()]
        return [(source, node) for source in self._pred[node]]

    def out_edges(self, node: str, data: bool = False) -> list[Any]:
        if data:
            return [(node, target, attrs) for target, attrs in self._succ[node].items()]
        return [(node, target) for target in self._succ[node]]

    def number_of_edges(self) -> int:
        return sum(len(targets) for targets in self._succ.values())

    def has_edge(self, source: str, target: str) -> bool:
        return target in self._succ.get(source, ())

    def add_edge(self, source: str, target: str, **attrs: Any) -> None:
        for node in (source, target):
            if node not in self._node:
                self.add_node(node)
        edge = self._succ[source].get(target)
        if edge is None:
            edge = self._succ[source][target] = self._pred[target][source] = {}  # type: ignore[typeddict-item]
        edge.update(attrs)  # type: ignore[typeddict-item]

    def remove_edge(self, source: str, target: str) -> None:
        try:
            del self._succ[source][target]
            del self._pred[target][source]
        except KeyError:
            raise KeyError(f"the DAG has no edge {source!r} -> {target!r}") from None

    def remove_edges_from(self, edges: Iterable[tuple[str, ...]]) -> None:
        for source, target, *_ in list(edges):
            if self.has_edge(source, target):
                self.remove_edge(source, target)

    def copy(self) -> "Dag":
        """A new DAG with copies of the graph's, each node's and each edge's attribute dicts."""
        other = Dag(**self.graph)
        for node, attrs in self._node.items():
            other.add_node(node, **attrs)
        for source, targets in self._succ.items():
            for target, edge in targets.items():
                other.add_edge(source, target, **edge)
        return other


class NodeView:
    """`dag.nodes`: ids in insertion order; `nodes[id]` the attributes; `nodes(data=True)` pairs."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: dict[str, NodeAttrs]) -> None:
        self._nodes = nodes

    def __getitem__(self, node: str) -> NodeAttrs:
        return self._nodes[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def items(self) -> Iterable[tuple[str, NodeAttrs]]:
        return self._nodes.items()

    def keys(self) -> Iterable[str]:
        return self._nodes.keys()

    def values(self) -> Iterable[NodeAttrs]:
        return self._nodes.values()

    def get(self, node: str, default: Any = None) -> Any:
        return self._nodes.get(node, default)

    @overload
    def __call__(self, data: Literal[False] = False) -> Iterable[str]: ...
    @overload
    def __call__(self, data: Literal[True]) -> Iterable[tuple[str, NodeAttrs]]: ...
    def __call__(self, data: bool = False) -> Iterable[str] | Iterable[tuple[str, NodeAttrs]]:
        return self._nodes.items() if data else self._nodes.keys()


class EdgeView:
    """`dag.edges`: (source, target) in networkx's order; `edges[source, target]` the attributes;
    `edges(data=True)` triples."""

    __slots__ = ("_succ",)

    def __init__(self, succ: dict[str, dict[str, EdgeAttrs]]) -> None:
        self._succ = succ

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((source, target) for source, targets in self._succ.items() for target in targets)

    def __len__(self) -> int:
        return sum(len(targets) for targets in self._succ.values())

    def __contains__(self, edge: object) -> bool:
        if not isinstance(edge, tuple) or len(edge) != 2:
            return False
        source, target = edge
        return target in self._succ.get(source, ())

    def __getitem__(self, edge: tuple[str, str]) -> EdgeAttrs:
        source, target = edge
        return self._succ[source][target]

    @overload
    def __call__(self, data: Literal[False] = False) -> Iterator[tuple[str, str]]: ...
    @overload
    def __call__(self, data: Literal[True]) -> Iterator[tuple[str, str, EdgeAttrs]]: ...
    def __call__(self, data: bool = False) -> Iterator[tuple[str, str]] | Iterator[tuple[str, str, EdgeAttrs]]:
        if data:
            return ((source, target, attrs) for source, targets in self._succ.items() for target, attrs in targets.items())
        return iter(self)
