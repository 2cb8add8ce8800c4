"""Per-device accounting, read from the DAG of one forward microbatch (docs/cost.md).

Every number here is a sum over DAG nodes: `params`, `flops`, `out_shape`, `wire_bytes` and
`backward_wire_bytes` are the node attributes the expander wrote. The backward pass and the
gradient sync of a training step are not in the DAG as nodes; their communication is:

- a node's `backward` attribute: the collective the backward issues on the gradient of the
  node's output, decided by the compiler (`par.dsl.lowering.backward`) and the one the generated code issues;
  a collective's on its group, any other node's on the tensor-parallel group of each of its ranks;
- forward Send (stage k -> k+1) -> backward Send (k+1 -> k) of the gradient, same bytes;
- a ring transfer of context parallelism (`ring`): its block is passed on again in backward and
  the block's gradient comes back the way the recv's came;
- per step: every rank AllReduces its gradients over its data-parallel group (times the
  context-parallel group: every part of the sequence gives a gradient), and parameters of
  nodes that run on sequence shards (S(seq)) are AllReduced over the tensor-parallel group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from par.dsl.checks.deployment import DTYPE_BYTES, Mesh
from par.dsl.dag.types import Dag, Dtype, NodeAttrs
from par.dsl.lowering.placement import PLACEMENTS, S_SEQ
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import COMPUTE_OPS, GATHERED_ATTENTION_SAVES, Saves, Stored, elements

KINDS = tuple(name for name, spec in COLLECTIVES.items() if spec.sends)  # of a Transfer
PHASES = ("forward", "backward", "gradients")
SCOPES = ("microbatch", "step")

_ALLREDUCE = COLLECTIVES["allreduce"]

Number = int | float


@dataclass(frozen=True, slots=True)
class TrainingState:
    """Bytes each parameter costs during training with Adam, in the precision the code runs (docs/cost.md)."""

    weights: int  # in the spec's dtype
    grads: int  # the gradient buffer, accumulated over microbatches and reduced in the gradient dtype
    master: int  # fp32 master weights the optimizer updates (none when the weights are fp32)
    optimizer: int  # Adam's m and v, fp32

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.master + self.optimizer


FP32 = DTYPE_BYTES["fp32"]


def training_state(dtype: Dtype, grad_dtype: Dtype = "fp32") -> TrainingState:
    """What the generated code keeps per parameter. fp32: 4 + 4 + 0 + 8 = 16 B; fp16/bf16: 2 +
    fp32 grads 4 + fp32 master 4 + Adam m, v 8 = 18 B. With gradients reduced in the model's
    dtype the code keeps them (2 B) and their fp32 copy that AdamW reads (4 B): 20 B."""
    size = DTYPE_BYTES[dtype]
    grads = DTYPE_BYTES[grad_dtype] + (FP32 if DTYPE_BYTES[grad_dtype] < FP32 else 0)
    return TrainingState(
        weights=size,
        grads=grads,
        master=FP32 if size < FP32 else 0,
        optimizer=2 * FP32,
    )


@dataclass(frozen=True, slots=True)
class Transfer:
    """One communication: `bytes` sent by each of `senders`; `group` is every rank taking part."""

    phase: str  # forward | backward (both per microbatch) | gradients (per step)
    kind: str  # allgather | allreduce | reducescatter | alltoall | send
    node: str | None  # the DAG node it belongs to (its backward, for the backward phase)
    group: tuple[int, ...]
    senders: tuple[int, ...]
    bytes: Number


@dataclass(frozen=True, slots=True)
class RankCost:
    """One device: forward numbers are for one microbatch; `comm` holds every phase."""

    rank: int
    stage: int
    layers: tuple[int, ...]
    params: int
    flops: int  # forward, one microbatch
    activation_bytes: int  # one microbatch, kept for backward
    comm: dict[str, dict[str, Number]] = field(default_factory=dict)  # phase -> kind -> bytes sent

    def signature(self) -> tuple:
        """Everything but the rank: devices with equal signatures are shown as one row."""
        comm = tuple((phase, tuple(sorted(kinds.items()))) for phase, kinds in sorted(self.comm.items()))
        return (self.stage, self.layers, self.params, self.flops, self.activation_bytes, comm)


def dtype_bytes(graph: Dag) -> int:
    return DTYPE_BYTES[graph.graph["model"]["dtype"]]


def out_bytes(graph: Dag, node: str) -> int:
    return elements(tuple(graph.nodes[node]["out_shape"])) * dtype_bytes(graph)


def transfers(graph: Dag) -> list[Transfer]:
    """Every communication of a training step, forward and backward of one microbatch and the gradient sync."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    found: list[Transfer] = []
    for node, data in graph.nodes(data=True):
        if data["kind"] != "comm":
            continue
        group: tuple[int, ...]
        if data["op"] == "send":
            group = (data["devices"][0], data["peer"])
            found.append(Transfer("forward", "send", node, group, group[:1], data["wire_bytes"]))
            if "ring" in data:  # the backward passes the block on again (its gradient comes back as the recv's)
                found.append(Transfer("backward", "send", node, group, group[:1], data["wire_bytes"]))
        elif data["op"] == "recv":
            sender = next(iter(graph.predecessors(node)))
            group = (data["devices"][0], data["peer"])
            found.append(Transfer("backward", "send", node, group, group[:1], graph.nodes[sender]["wire_bytes"]))
        else:
            group = tuple(data["devices"])
            found.append(Transfer("forward", data["op"], node, group, group, data["wire_bytes"]))
            if "backward" in data:
                found.append(Transfer("backward", data["backward"], node, group, group, data["backward_wire_bytes"]))
    for node, data in graph.nodes(data=True):
        if data["kind"] != "comm" and "backward" in data:
            for rank in data["devices"]:
                group = mesh.tp_group_of(rank)
                found.append(Transfer("backward", data["backward"], node, group, (rank,), data["backward_wire_bytes"]))
    found += _gradient_sync(graph, mesh)
    return found


def _gradient_sync(graph: Dag, mesh: Mesh) -> list[Transfer]:
    """Per step: data-parallel AllReduce of each rank's gradients; tp AllReduce of the parameters
    whose gradient is partial over tp: those of ops on sequence shards, and the bias of a
    row-parallel linear, which one rank adds (docs/pytorch.md)."""
    size = DTYPE_BYTES[graph.graph["mesh"]["grad_dtype"]]  # what the gradients are reduced in
    held: dict[int, int] = {rank: 0 for rank in range(mesh.world)}
    tp_partial: dict[int, int] = {rank: 0 for rank in range(mesh.world)}
    experts: dict[int, int] = {rank: 0 for rank in range(mesh.world)}  # routed: the rank's own experts
    for _, data in graph.nodes(data=True):
        if data["kind"] != "compute" or not data["params"]:
            continue
        placement = PLACEMENTS[data["in_placement"]] if "in_placement" in data else None
        for rank in data["devices"]:
            if placement is not None and placement.routed:
                experts[rank] += data["params"]
                continue
            held[rank] += data["params"]
            # on sequence shards: reading one (a norm under sp) or giving one (learned positions)
            if S_SEQ in (PLACEMENTS[data[key]] for key in ("in_placement", "out_placement") if key in data):
                tp_partial[rank] += data["params"]
            elif data.get("bias") and data.get("style") == "row" and mesh.tp > 1:
                tp_partial[rank] += data["out_shape"][-1]
    found = []
    for node, data in graph.nodes(data=True):
        if data.get("tied"):  # the two copies of a tied embedding sum their gradients (Megatron's embedding group)
            for rank in data["devices"]:
                dp_rank, _, tp_rank = mesh.coords(rank)
                copies = (mesh.rank(dp_rank=dp_rank, stage=0, tp_rank=tp_rank), rank)
                sent = _ALLREDUCE.wire_bytes(2, data["params"] * size)
                found += [Transfer("gradients", "allreduce", node, copies, (member,), sent) for member in copies]
    for rank in range(mesh.world):
        # An expert's weights are on one rank of each expert-parallel group: reduced over those.
        groups = ((mesh.gradient_group_of(rank), held[rank]), (mesh.expert_dp_group_of(rank), experts[rank]), (mesh.tp_group_of(rank), tp_partial[rank]))
        for group, params in groups:
            if len(group) > 1 and params:
                sent = _ALLREDUCE.wire_bytes(len(group), params * size)
                found.append(Transfer("gradients", "allreduce", None, group, (rank,), sent))
    return found


def comm_by_rank(items: Iterable[Transfer], world: int) -> dict[int, dict[str, dict[str, Number]]]:
    """rank -> phase -> kind -> bytes sent, zero entries left out."""
    table: dict[int, dict[str, dict[str, Number]]] = {rank: {} for rank in range(world)}
    for item in items:
        for rank in item.senders:
            kinds = table[rank].setdefault(item.phase, {})
            kinds[item.kind] = kinds.get(item.kind, 0) + item.bytes
    return table


def rank_costs(
    graph: Dag, *, items: Iterable[Transfer] | None = None, kept: dict[int, dict[tuple, int]] | None = None
) -> list[RankCost]:
    """One RankCost per device, in rank order; `items` are the graph's transfers and `kept` its
    `saved_tensors` if already known."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    world = mesh.world
    params, flops = [0] * world, [0] * world
    layers: list[set[int]] = [set() for _ in range(world)]
    for _, data in graph.nodes(data=True):
        for rank in data["devices"]:
            params[rank] += data["params"]
            flops[rank] += data["flops"]
            if data["kind"] == "compute" and data["layer"] is not None:
                layers[rank].add(data["layer"])
    activations = saved_bytes(graph) if kept is None else _summed(kept)
    comm = comm_by_rank(transfers(graph) if items is None else items, world)
    return [
        RankCost(
            rank=rank,
            stage=mesh.coords(rank)[1],
            layers=tuple(sorted(layers[rank])),
            params=params[rank],
            flops=flops[rank],
            activation_bytes=activations[rank],
            comm=comm[rank],
        )
        for rank in range(world)
    ]


def saves_of(data: NodeAttrs) -> Saves:
    """What the generated code keeps of a node for its backward (the registry's `saves`)."""
    if data["kind"] == "compute":
        if data["op"] == "ring_attention" and data["operand_shapes"][1][1] > data["operand_shapes"][0][1]:
            return GATHERED_ATTENTION_SAVES  # the all-gather form: one attention over the whole sequence's keys
        return COMPUTE_OPS[data["op"]].saves
    if "ring" in data:  # a ring's blocks pass through: the backward passes them again
        return Saves()
    spec = COLLECTIVES.get(data["op"])
    return spec.saves if spec is not None else Saves()


def saved_tensors(graph: Dag, *, on_cpu: bool = False) -> dict[int, dict[tuple, int]]:
    """rank -> the tensors its forward of one microbatch keeps for the backward -> their bytes.

    Each node keeps what its op's `saves` says. A tensor kept by several nodes is one tensor: it
    is keyed by the node that produced it (and the rank, for a collective's result). A local
    slice without a pair is a view of its source: keeping it keeps the whole source, unless it
    copies its part (`clone`, par.dsl.lowering.copies). `on_cpu`: with what
    torch's CPU kernels keep instead of its CUDA ones (the test that measures them runs on CPU).
    """
    model = graph.graph["model"]
    # fp32 grouped-query attention expands K and V (runtime/ops.causal_attention): enable_gqa is a FlashAttention-only, fp16/bf16-only path on CUDA
    stored = Stored(dtype_bytes(graph), model["head_dim"], model["dtype"] == "fp32" and model["kv_heads"] != model["heads"])
    kept: dict[int, dict[tuple, int]] = {rank: {} for rank in range(graph.graph["mesh"]["world"])}
    pred, nodes, size = graph.pred, graph.nodes, stored.dtype_bytes
    for node, data in nodes(data=True):
        saves = saves_of(data)
        # Per node, not per rank: the operands' tensors (only when kept), the output's bytes and the extras.
        held: list[tuple[str, int]] = []
        if saves.operands:
            operands = {index: source for source, edge in pred[node].items() for index in edge["operands"]}
            held = [_holder(graph, operands[index], size) for index in saves.operands]
        output = elements(tuple(data["out_shape"])) * size if saves.output else 0
        local = (tuple(data["in_shape"]), tuple(data["out_shape"]), stored)
        extra = saves.extra(*local) + (saves.on_cpu(*local) if on_cpu else 0)
        for rank in data["devices"]:
            tensors = kept[rank]
            for holder, held_bytes in held:
                tensors[(holder, rank)] = held_bytes
            if saves.output:
                tensors[(node, rank)] = output
            if extra:
                tensors[(node, rank, "extra")] = extra
    return kept


def _holder(graph: Dag, node: str, size: int) -> tuple[str, int]:
    """The node whose tensor holds `node`'s result (a plain slice's source, unless it copies) and
    its bytes (`size` per element).

    The slice of the microbatch input is no view: each rank is given its part of the stream."""
    data = graph.nodes[node]
    if data["op"] == "slice" and "backward" not in data and not data.get("clone"):
        source = next(iter(graph.predecessors(node)))
        if graph.nodes[source]["op"] != "input":
            return _holder(graph, source, size)
    return node, elements(tuple(data["out_shape"])) * size


def saved_bytes(graph: Dag, *, on_cpu: bool = False) -> list[int]:
    """Per rank, the bytes its forward of one microbatch keeps for the backward (`saved_tensors`)."""
    return _summed(saved_tensors(graph, on_cpu=on_cpu))


def _summed(kept: dict[int, dict[tuple, int]]) -> list[int]:
    return [sum(tensors.values()) for _, tensors in sorted(kept.items())]


def per_rank_comm(graph: Dag, *, scope: str = "microbatch") -> dict[int, dict[str, Number]]:
    """Bytes each rank sends, by collective kind: {rank: {kind: bytes}}, zero kinds left out.

    scope="microbatch": the forward pass of one microbatch, exactly the DAG's collectives.
    scope="step": a training step: microbatches x (forward + backward) plus the gradient sync.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    result: dict[int, dict[str, Number]] = {}
    for rank, by_phase in comm_by_rank(transfers(graph), mesh.world).items():
        if scope == "microbatch":
            kinds = by_phase.get("forward", {})
        else:
            kinds = step_kinds(by_phase, microbatches=mesh.microbatches)
        result[rank] = {kind: kinds[kind] for kind in KINDS if kinds.get(kind)}
    return result


def phase_repeats(microbatches: int) -> dict[str, int]:
    """How often each phase runs in a training step."""
    return {"forward": microbatches, "backward": microbatches, "gradients": 1}


def step_kinds(by_phase: dict[str, dict[str, Number]], *, microbatches: int) -> dict[str, Number]:
    """kind -> bytes a device sends in one training step, from its per-phase bytes."""
    kinds: dict[str, Number] = {}
    for phase, times in phase_repeats(microbatches).items():
        for kind, sent in by_phase.get(phase, {}).items():
            kinds[kind] = kinds.get(kind, 0) + sent * times
    return kinds


def model_parameters(graph: Dag) -> int:
    """Distinct parameters of the model: one data-parallel replica, replicated ops counted once,
    the last stage's copy of a tied embedding not at all."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    total = 0
    for _, data in graph.nodes(data=True):
        if data["kind"] != "compute" or data.get("tied"):
            continue
        dp_rank, _, tp_rank = mesh.coords(data["devices"][0])
        sharded = data.get("style") in ("column", "row") or data["op"] == "embedding"  # split over tp
        # Routed ops hold their rank's experts: the ranks of one expert-parallel group hold them all.
        replicas = mesh.ep if "in_placement" in data and PLACEMENTS[data["in_placement"]].routed else 1
        if dp_rank < replicas and (sharded or tp_rank == 0):
            total += data["params"]
    return total
