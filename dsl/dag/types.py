"""The types of the DAG (README: The DAG): what a node, an edge and the graph carry, and the
enumerations they are made of. Expansion writes these attributes and every reader of the DAG
reads them; tests hold the keys to what `expand` writes and the op names to the registry.

No `from __future__ import annotations` here: TypedDict reads `NotRequired` from evaluated
annotations, and the tests compare its required and optional keys with real nodes.
"""

from typing import TYPE_CHECKING, Literal, NotRequired, TypeAlias, TypedDict, cast

import networkx as nx

Kind = Literal["compute", "comm", "route"]
ComputeOp = Literal[
    "layernorm", "rmsnorm", "linear", "attention", "gelu", "silu", "add", "mul",
    "router", "permute", "expert_linear", "unpermute",
]  # registry.ops
CollectiveOp = Literal[
    "allgather", "allreduce", "reducescatter", "alltoall", "dispatch", "combine", "send", "recv", "slice"
]  # registry.collectives
IoOp = Literal["input", "output"]
OpName = ComputeOp | CollectiveOp | IoOp
PlacementKind = Literal["R", "P", "S"]  # replicated, partial sum, split
# How nodes, drawings and reports write a Placement; E(...): routed over the expert-parallel group.
PlacementText = Literal["R", "P", "S(seq)", "S(-1)", "E(R)", "E(P)", "E(S(seq))", "E(S(-1))"]
Dtype = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["gpipe", "1f1b"]
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
    reason: NotRequired[str]  # collectives and slices: why the node exists
    inserted: NotRequired[bool]  # collectives: the compiler added it, the spec did not write it
    peer: NotRequired[int]  # send and recv: the rank on the other side
    # The collective the training backward issues on the gradient of the output (par.dsl.lowering.backward).
    backward: NotRequired[CollectiveOp]
    backward_wire_bytes: NotRequired[int | float]
    backward_reason: NotRequired[str]  # why an AllGather needs no ReduceScatter in backward
    # Per operand, where operands differ (unpermute: the experts' results and the router's scores).
    operand_shapes: NotRequired[list[Shape]]
    operand_placements: NotRequired[list[PlacementText]]
    wire_bytes_worst: NotRequired[int | float]  # token routing: at the capacity factor's worst case


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
    stages: list[list[int]]  # per stage: [first layer, last layer]
    schedule: Schedule
    sequence_parallel: bool
    grad_dtype: Dtype  # what gradients are accumulated and reduced in
    ep: NotRequired[int]  # expert-parallel degree (docs/language.md); absent when 1


class GraphAttrs(TypedDict):
    spec: str
    source: str
    model: ModelAttrs
    mesh: MeshAttrs
    layers: int
    stream: PlacementText
    microbatch_shape: list[int]
    strict: bool


if TYPE_CHECKING:
    Dag: TypeAlias = nx.DiGraph[str, NodeAttrs, EdgeAttrs]
else:
    Dag = nx.DiGraph


def plain(graph: "Dag") -> "nx.DiGraph[str]":
    """The graph as networkx's algorithms type it: their stubs take plain attribute dicts."""
    return cast("nx.DiGraph[str]", graph)


def graph_attrs(graph: "Dag") -> GraphAttrs:
    """The graph's attributes, typed (networkx types `graph.graph` as a plain dict)."""
    return cast(GraphAttrs, graph.graph)
