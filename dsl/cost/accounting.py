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
  nodes that run on sequence shards (S(seq)) are AllReduced over the tensor-parallel group;
  with ZeRO (the mesh's `zero`) the data-parallel AllReduce becomes a ReduceScatter of the
  gradients and an AllGather of the updated weights, and at zero 3 a gather of each layer's
  weights in every forward and backward and a ReduceScatter of its gradients in every backward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from math import prod

from par.dsl.checks.deployment import DTYPE_BYTES, Mesh
from par.dsl.dag.types import Dag, Dtype, NodeAttrs
from par.dsl.lowering.placement import PLACEMENTS, S_SEQ
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import COMPUTE_OPS, Saves, Stored, elements, no_bytes

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
    reduced: int = 0  # part of `grads`: the fp32 copy of the reduced gradients AdamW reads, beside a 16-bit buffer

    @property
    def buffer(self) -> int:
        """The gradient buffer alone, in the gradient dtype."""
        return self.grads - self.reduced

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.master + self.optimizer


FP32 = DTYPE_BYTES["fp32"]


def training_state(dtype: Dtype, grad_dtype: Dtype = "fp32") -> TrainingState:
    """What the generated code keeps per parameter. fp32: 4 + 4 + 0 + 8 = 16 B; fp16/bf16: 2 +
    fp32 grads 4 + fp32 master 4 + Adam m, v 8 = 18 B. With gradients reduced in the model's
    dtype the code keeps them (2 B) and their fp32 copy that AdamW reads (4 B): 20 B."""
    size = DTYPE_BYTES[dtype]
    reduced = FP32 if DTYPE_BYTES[grad_dtype] < FP32 else 0
    return TrainingState(
        weights=size,
        grads=DTYPE_BYTES[grad_dtype] + reduced,
        master=FP32 if size < FP32 else 0,
        optimizer=2 * FP32,
        reduced=reduced,
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
    recompute_flops: int = 0  # forward FLOPs the backward of one microbatch runs again (recompute)
    rerun_bytes: int = 0  # what a rerun holds at once beside the kept activations: its largest layer's
    comm: dict[str, dict[str, Number]] = field(default_factory=dict)  # phase -> kind -> bytes sent
    shard: int | None = None  # with ZeRO: the parameters whose sharded training state it keeps (`state_shards`)

    def signature(self) -> tuple:
        """Everything but the rank: devices with equal signatures are shown as one row."""
        comm = tuple((phase, tuple(sorted(kinds.items()))) for phase, kinds in sorted(self.comm.items()))
        return (self.stage, self.layers, self.params, self.flops, self.activation_bytes, self.recompute_flops, self.rerun_bytes, comm, self.shard)


def dtype_bytes(graph: Dag) -> int:
    return DTYPE_BYTES[graph.graph["model"]["dtype"]]


def transfers(graph: Dag) -> list[Transfer]:
    """Every communication of a training step, forward and backward of one microbatch and the gradient sync."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    found: list[Transfer] = []
    # One walk over the nodes; the other nodes' backward collectives are listed after every
    # collective node's transfers, as the order of the list is the order sums are taken in.
    others: list[Transfer] = []
    tp_groups: dict[int, tuple[int, ...]] = {}  # rank -> its tensor-parallel group, asked once per rank
    group: tuple[int, ...]
    for node, data in graph.nodes(data=True):
        if data["kind"] != "comm":
            if "backward" in data:
                for rank in data["devices"]:
                    group = tp_groups.get(rank) or tp_groups.setdefault(rank, mesh.tp_group_of(rank))
                    others.append(Transfer("backward", data["backward"], node, group, (rank,), data["backward_wire_bytes"]))
            continue
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
            if data.get("recompute"):  # the backward runs the layer's forward again, this collective with it
                found.append(Transfer("backward", data["op"], node, group, group, data["wire_bytes"]))
            if "backward" in data:
                found.append(Transfer("backward", data["backward"], node, group, group, data["backward_wire_bytes"]))
    found += others
    found += _gradient_sync(graph, mesh)
    return found


@dataclass(frozen=True, slots=True)
class Held:
    """One rank's parameters by how their gradients are reduced (docs/cost.md, Gradient sync)."""

    dense: int  # over the data-parallel group (times the context-parallel one)
    experts: int  # routed: the rank's own experts, over the ranks holding the same experts
    tp_partial: int  # also over the tensor-parallel group: their gradient is partial there


# Placements by the text nodes write: a set lookup per node, where comparing Placements is a call.
ROUTED_TEXTS = frozenset(text for text, placement in PLACEMENTS.items() if placement.routed)
SEQ_TEXTS = frozenset(text for text, placement in PLACEMENTS.items() if placement == S_SEQ)


def routed(data: NodeAttrs) -> bool:
    """Whether a node runs on routed tokens: its parameters are experts, reduced over the ranks holding the same experts."""
    return data.get("in_placement") in ROUTED_TEXTS


def on_sequence_shards(data: NodeAttrs) -> bool:
    """Whether a node reads a sequence shard (a norm under sp) or gives one (learned positions):
    its parameters' gradient is partial over the tensor-parallel group."""
    return data.get("in_placement") in SEQ_TEXTS or data.get("out_placement") in SEQ_TEXTS


def reduce_group(mesh: Mesh, data: NodeAttrs, rank: int) -> tuple[int, ...]:
    """The ranks that add up `rank`'s gradients of a node's parameters (and, under ZeRO, shard their state)."""
    return mesh.expert_dp_group_of(rank) if routed(data) else mesh.gradient_group_of(rank)


def held_params(graph: Dag, mesh: Mesh) -> list[Held]:
    """Per rank, its parameters as the gradient sync reduces them."""
    dense, experts, tp_partial = [0] * mesh.world, [0] * mesh.world, [0] * mesh.world
    for _, data in graph.nodes(data=True):
        if data["kind"] != "compute" or not data["params"]:
            continue
        params = data["params"]
        if routed(data):
            for rank in data["devices"]:
                experts[rank] += params
            continue
        partial = 0  # what of them is partial over tp
        if on_sequence_shards(data):
            partial = params
        elif data.get("bias") and data.get("style") == "row" and mesh.tp > 1:
            partial = data["out_shape"][-1]  # the bias, which one rank adds
        for rank in data["devices"]:
            dense[rank] += params
            tp_partial[rank] += partial
    return [Held(*numbers) for numbers in zip(dense, experts, tp_partial, strict=True)]


def shard(params: int, ranks: int) -> int:
    """What one of `ranks` ranks keeps of `params` parameters sharded over them: the flat
    parameters are padded to a multiple of `ranks`, so every rank keeps as many."""
    return -(-params // ranks)


def zero_groups(mesh: Mesh, rank: int, held: Held) -> tuple[tuple[tuple[int, ...], int], ...]:
    """(group, parameters) for each data-parallel reduction of `rank`'s gradients: the dense ones
    over dp × cp ranks, an expert's over the ranks holding the same experts. ZeRO shards the
    training state of each over the same group."""
    return ((mesh.gradient_group_of(rank), held.dense), (mesh.expert_dp_group_of(rank), held.experts))


def state_shards(graph: Dag) -> list[int]:
    """Per rank, the parameters whose sharded training state it keeps under ZeRO (docs/cost.md):
    its share of each group's parameters; all of them with zero 0 or a group of one."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    found = []
    for rank, held in enumerate(held_params(graph, mesh)):
        groups = zero_groups(mesh, rank, held)
        found.append(sum(shard(params, len(group)) if mesh.zero else params for group, params in groups))
    return found


_REDUCESCATTER, _ALLGATHER = COLLECTIVES["reducescatter"], COLLECTIVES["allgather"]


def _gradient_sync(graph: Dag, mesh: Mesh) -> list[Transfer]:
    """Per step: data-parallel AllReduce of each rank's gradients, or with ZeRO a ReduceScatter
    of them and an AllGather of the updated weights (zero 3: `_zero3_gathers`); tp AllReduce of
    the parameters whose gradient is partial over tp: those of ops on sequence shards, and the
    bias of a row-parallel linear, which one rank adds (docs/pytorch.md)."""
    size = DTYPE_BYTES[graph.graph["mesh"]["grad_dtype"]]  # what the gradients are reduced in
    weight_size = dtype_bytes(graph)
    held = held_params(graph, mesh)

    def kept(params: int, rank: int) -> int:
        """What a rank keeps of `params` gradients: from zero 2 its part only."""
        return shard(params, len(mesh.gradient_group_of(rank))) if mesh.zero >= 2 else params

    found = []
    for node, data in graph.nodes(data=True):
        if data.get("tied"):  # the two copies of a tied embedding sum their gradients (Megatron's embedding group)
            for rank in data["devices"]:
                dp_rank, _, tp_rank = mesh.coords(rank)
                copies = (mesh.rank(dp_rank=dp_rank, stage=0, tp_rank=tp_rank), rank)
                sent = _ALLREDUCE.wire_bytes(2, kept(data["params"], rank) * size)
                found += [Transfer("gradients", "allreduce", node, copies, (member,), sent) for member in copies]
    for rank in range(mesh.world):
        # An expert's weights are on one rank of each expert-parallel group: reduced over those.
        reductions = [(group, params, bool(mesh.zero)) for group, params in zero_groups(mesh, rank, held[rank])]
        reductions.append((mesh.tp_group_of(rank), kept(held[rank].tp_partial, rank), False))
        for group, params, sharded in reductions:
            n = len(group)
            if n < 2 or not params:
                continue
            if not sharded:
                found.append(Transfer("gradients", "allreduce", None, group, (rank,), _ALLREDUCE.wire_bytes(n, params * size)))
            elif mesh.zero < 3:  # zero 3 reduces and gathers per layer and microbatch
                padded = shard(params, n) * n
                if mesh.zero == 1:  # zero 2 reduce-scatters each gradient in backward (`_zero2_scatters`)
                    found.append(Transfer("gradients", "reducescatter", None, group, (rank,), _REDUCESCATTER.wire_bytes(n, padded * size)))
                found.append(Transfer("gradients", "allgather", None, group, (rank,), _ALLGATHER.wire_bytes(n, padded * weight_size)))
    if mesh.zero == 2:
        found += _zero2_scatters(graph, mesh)
    if mesh.zero == 3:
        found += _zero3_gathers(graph, mesh)
    return found


def _zero2_scatters(graph: Dag, mesh: Mesh) -> list[Transfer]:
    """zero 2 keeps each rank's part of the gradients only: every microbatch's backward
    reduce-scatters each node's parameter gradients as soon as they are computed (DeepSpeed's
    stage 2 with buckets of one op), charged to the node's backward."""
    size = DTYPE_BYTES[graph.graph["mesh"]["grad_dtype"]]
    found = []
    for node, data in graph.nodes(data=True):
        if data["kind"] != "compute" or not data["params"]:
            continue
        for rank in data["devices"]:
            group = reduce_group(mesh, data, rank)
            if len(group) > 1:
                padded = shard(data["params"], len(group)) * len(group)
                found.append(Transfer("backward", "reducescatter", node, group, (rank,), _REDUCESCATTER.wire_bytes(len(group), padded * size)))
    return found


def _zero3_gathers(graph: Dag, mesh: Mesh) -> list[Transfer]:
    """zero 3 keeps each rank's share of the weights only: every microbatch gathers a layer's
    weights before its forward and again before its backward, and reduce-scatters its
    gradients after it (DeepSpeed's stage 3, FSDP's FULL_SHARD). Each is charged to the layer's
    first node with parameters on the rank (the backward's ReduceScatter to its last); the
    model's ends gather per op."""
    size, weight_size = DTYPE_BYTES[graph.graph["mesh"]["grad_dtype"]], dtype_bytes(graph)
    units: dict[tuple, list] = {}  # (rank, layer or end node, group) -> [params, first node, last node]
    for node, data in graph.nodes(data=True):
        if data["kind"] != "compute" or not data["params"]:
            continue
        for rank in data["devices"]:
            group = reduce_group(mesh, data, rank)
            unit = units.setdefault((rank, node if data["layer"] is None else data["layer"], group), [0, node, node])
            unit[0] += data["params"]
            unit[2] = node
    found = []
    for (rank, _, group), (params, first, last) in units.items():
        if len(group) < 2:
            continue
        padded = shard(params, len(group)) * len(group)
        gather = _ALLGATHER.wire_bytes(len(group), padded * weight_size)
        found.append(Transfer("forward", "allgather", first, group, (rank,), gather))
        found.append(Transfer("backward", "allgather", first, group, (rank,), gather))
        found.append(Transfer("backward", "reducescatter", last, group, (rank,), _REDUCESCATTER.wire_bytes(len(group), padded * size)))
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
    params, flops, again = [0] * world, [0] * world, [0] * world
    layers: list[set[int]] = [set() for _ in range(world)]
    for _, data in graph.nodes(data=True):
        node_params, node_flops = data["params"], data["flops"]
        rerun_flops = node_flops if data.get("recompute") else 0
        layer = data["layer"] if data["kind"] == "compute" else None
        for rank in data["devices"]:
            params[rank] += node_params
            flops[rank] += node_flops
            again[rank] += rerun_flops
            if layer is not None:
                layers[rank].add(layer)
    kept = saved_tensors(graph) if kept is None else kept
    activations, rerun = _summed(kept), rerun_bytes(graph, kept)
    comm = comm_by_rank(transfers(graph) if items is None else items, world)
    shards: list[int | None] = list(state_shards(graph)) if mesh.zero else [None] * world
    return [
        RankCost(
            rank=rank,
            stage=mesh.coords(rank)[1],
            layers=tuple(sorted(layers[rank])),
            params=params[rank],
            flops=flops[rank],
            activation_bytes=activations[rank],
            recompute_flops=again[rank],
            rerun_bytes=rerun[rank],
            comm=comm[rank],
            shard=shards[rank],
        )
        for rank in range(world)
    ]


def saves_of(data: NodeAttrs) -> Saves:
    """What the generated code keeps of a node for its backward (the registry's `saves`)."""
    if data["kind"] == "compute":
        op = COMPUTE_OPS[data["op"]]
        return op.saves_for(data["operand_shapes"]) if op.saves_for is not None else op.saves
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

    A node the backward recomputes (`recompute`) keeps nothing: its region (the layer, or the
    attention core) keeps the tensors it reads from outside, from which it runs again
    (torch.utils.checkpoint saves its inputs). What a kept node reads from inside the region is
    kept as before.
    """
    keeper = _Keeper(graph, on_cpu)
    kept: dict[int, dict[tuple, int]] = {rank: {} for rank in range(graph.graph["mesh"]["world"])}
    pred, nodes = graph.pred, graph.nodes
    for node, data in nodes(data=True):
        keeper.visit(node, data)
        if data.get("recompute"):
            for source in pred[node]:
                if not nodes[source].get("recompute") or nodes[source]["layer"] != data["layer"]:
                    tensor, tensor_bytes = keeper.holder(source)
                    for rank in data["devices"]:
                        kept[rank][(tensor, rank)] = tensor_bytes
            continue
        keeper.keep(node, data, kept)
    return kept


def _stored(graph: Dag) -> Stored:
    model = graph.graph["model"]
    # fp32 grouped-query attention expands K and V (runtime/ops.causal_attention): enable_gqa is a FlashAttention-only, fp16/bf16-only path on CUDA
    return Stored(dtype_bytes(graph), model["head_dim"], model["dtype"] == "fp32" and model["kv_heads"] != model["heads"])


class _Keeper:
    """What nodes keep for their backward, each node's tensors added to its ranks' (`keep`).
    A pass over a large DAG meets the same facts again and again, each worked out once here:
    an op's `saves` (by its name, where its nodes keep alike), the tensor holding a node's
    result (read by each of its consumers), an op's extra bytes (by its local shapes, which the
    nodes of one op share)."""

    def __init__(self, graph: Dag, on_cpu: bool):
        self.graph, self.pred, self.on_cpu = graph, graph.pred, on_cpu
        self.stored = _stored(graph)
        # compute op -> its `saves`, None where it keeps nothing; ops with `saves_for` are not here
        self.op_saves = {name: spec.saves if self.keeps(spec.saves) else None for name, spec in COMPUTE_OPS.items() if spec.saves_for is None}
        self.holders: dict[str, tuple[str, int]] = {}  # node -> `_holder`
        self.extras: dict[tuple, int] = {}  # (extra, on_cpu rule, local input shape, local output shape) -> bytes

    def keeps(self, saves: Saves) -> bool:
        return bool(saves.operands or saves.output or saves.extra is not no_bytes or (self.on_cpu and saves.on_cpu is not no_bytes))

    def holder(self, node: str) -> tuple[str, int]:
        """`_holder` of `node`."""
        found = self.holders.get(node)
        if found is None:
            found = self.holders[node] = _holder(self.graph, node, self.stored.dtype_bytes)
        return found

    def visit(self, node: str, data: NodeAttrs) -> None:
        """Notes the tensor holding `node`'s result while its attributes are at hand (unless a
        slice's source holds it): its consumers, which mostly come soon after it, then find it
        without reading the node again."""
        if data["op"] != "slice" or "backward" in data or data.get("clone"):
            self.holders[node] = (node, prod(data["out_shape"]) * self.stored.dtype_bytes)  # `elements`, inlined

    def extra(self, saves: Saves, data: NodeAttrs) -> int:
        """The bytes a node keeps beside its operands and output (`saves.extra`, and `saves.on_cpu` on CPU)."""
        on_cpu = saves.on_cpu if self.on_cpu else no_bytes
        if saves.extra is no_bytes and on_cpu is no_bytes:
            return 0
        key = (saves.extra, on_cpu, tuple(data["in_shape"]), tuple(data["out_shape"]))
        found = self.extras.get(key)
        if found is None:
            local = (key[2], key[3], self.stored)
            found = self.extras[key] = saves.extra(*local) + on_cpu(*local)
        return found

    def keep(self, node: str, data: NodeAttrs, kept: dict[int, dict[tuple, int]]) -> None:
        """Adds what `node` keeps for its backward (its op's `saves`) to each of its ranks' tensors."""
        op = data["op"]
        if data["kind"] == "compute" and op in self.op_saves:
            saves = self.op_saves[op]
            if saves is None:
                return
        else:
            saves = saves_of(data)
        # Per node, not per rank: the operands' tensors (only when kept), the output's bytes and the extras.
        held: list[tuple[str, int]] = []
        if saves.operands:
            sources: dict[int, str] = {}  # operand index -> the node giving it
            for source, edge in self.pred[node].items():
                for index in edge["operands"]:
                    sources[index] = source
            holders = self.holders
            held = [holders.get(source) or self.holder(source) for source in map(sources.__getitem__, saves.operands)]
        output = prod(data["out_shape"]) * self.stored.dtype_bytes if saves.output else 0  # `elements`, inlined
        extra = self.extra(saves, data)
        for rank in data["devices"]:
            tensors = kept[rank]
            for holder, held_bytes in held:
                tensors[(holder, rank)] = held_bytes
            if saves.output:
                tensors[(node, rank)] = output
            if extra:
                tensors[(node, rank, "extra")] = extra


def rerun_bytes(graph: Dag, kept: dict[int, dict[tuple, int]]) -> list[int]:
    """Per rank, what the rerun of a recomputed region holds at once beyond `kept` (the
    `saved_tensors`): the tensors its nodes keep for their backward, which the rerun makes again
    and the backward of that region then frees: the largest of the rank's layers."""
    if "recompute" not in graph.graph["mesh"]:
        return [0] * len(kept)
    keeper = _Keeper(graph, on_cpu=False)
    regions: dict[int | None, dict[int, dict[tuple, int]]] = {}
    for node, data in graph.nodes(data=True):
        if data.get("recompute"):
            region = regions.setdefault(data["layer"], {rank: {} for rank in kept})
            keeper.keep(node, data, region)
    largest = [0] * len(kept)
    for region in regions.values():
        for rank, tensors in region.items():
            largest[rank] = max(largest[rank], sum(held for key, held in tensors.items() if key not in kept[rank]))
    return largest


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

    scope="microbatch": the forward pass of one microbatch, exactly the DAG's collectives (and,
    with zero 3, the weights' per-layer AllGathers, which are no DAG nodes).
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
    coords: dict[int, tuple[int, int, int]] = {}  # rank -> (dp rank, stage, tp rank), worked out once per rank
    total = 0
    for _, data in graph.nodes(data=True):
        if data["kind"] != "compute" or not data["params"] or data.get("tied"):
            continue
        first = data["devices"][0]
        dp_rank, _, tp_rank = coords.get(first) or coords.setdefault(first, mesh.coords(first))
        sharded = data.get("style") in ("column", "row") or data["op"] == "embedding"  # split over tp
        # Routed ops hold their rank's experts: the ranks of one expert-parallel group hold them all.
        replicas = mesh.ep if routed(data) else 1
        if dp_rank < replicas and (sharded or tp_rank == 0):
            total += data["params"]
    return total
