"""The cost of a serving deployment, read from its prefill and decode DAGs (docs/cost.md, Serving).

Per device and microbatch of sequences, each phase takes its compute time (FLOPs at the
device's effective peak), its memory time (bytes read from HBM at `hbm_gbps`) and its
collectives (the α-β ring model of the training estimate). Compute and memory overlap, so a
phase is bound by the larger of the two (the roofline); collectives come after. Then:

- the prefill of every microbatch through the pipeline gives the time to first token (TTFT);
- a decode round gives every sequence one token: the time per output token (TPOT). A stage
  serves its microbatches one after another, and a microbatch's next token needs its previous
  one to have left the last stage, so a round lasts the longer of `microbatches ×` the slowest
  stage and the sum of the stages; the stages idle for the rest (the decode bubble).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from par.dsl.checks.deployment import DTYPE_BYTES, Hardware, Mesh
from par.dsl.compiler import Compiled
from par.dsl.cost.accounting import transfers
from par.dsl.cost.estimate import Clock, capacity
from par.dsl.dag.types import Dag, GraphAttrs, graph_attrs
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import elements

LOOKUPS = frozenset({"embedding", "positions"})  # read a row per token, not their whole table


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """What one device does for one microbatch in one phase."""

    rank: int
    stage: int
    flops: int
    weight_bytes: int  # parameters held
    weight_read: int  # parameter bytes read: every weight, a lookup table's rows of the tokens only
    kv_bytes: int  # the microbatch's KV cache on this device, allocated for the whole context
    kv_read: int  # cache bytes the phase reads (decode: the whole cache; prefill: what it writes)
    latency_s: float = 0.0  # collectives and sends: the α terms (steps × latency)
    transfer_s: float = 0.0  # and the β terms (bytes / bandwidth)
    compute_s: float = 0.0
    memory_s: float = 0.0

    @property
    def read_bytes(self) -> int:
        return self.weight_read + self.kv_read

    @property
    def comm_s(self) -> float:
        return self.latency_s + self.transfer_s

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.comm_s

    @property
    def bound(self) -> str:
        """The resource the device waits on longest in this phase."""
        found = {"compute": self.compute_s, "memory bandwidth": self.memory_s, "collectives": self.comm_s}
        return max(found, key=lambda name: found[name])


@dataclass(frozen=True, slots=True)
class PhaseCost:
    """One serving phase's cost: each device's load."""

    phase: str
    graph: Dag
    devices: tuple[DeviceLoad, ...]

    def stage_times(self, stages: int) -> list[float]:
        """Per stage, the slowest device's time for one microbatch."""
        times = [0.0] * stages
        for device in self.devices:
            times[device.stage] = max(times[device.stage], device.time_s)
        return times

    def slowest(self) -> DeviceLoad:
        return max(self.devices, key=lambda device: (device.time_s, device.read_bytes, device.flops, -device.rank))


@dataclass(frozen=True, slots=True)
class ServingCost:
    """A serving spec's cost: the prefill's and one decode step's."""

    graph: Dag  # the prefill's: the spec's settings
    hardware: Hardware | None
    prefill: PhaseCost
    decode: PhaseCost
    warnings: tuple[str, ...] = field(default=())

    @property
    def attrs(self) -> GraphAttrs:
        return graph_attrs(self.graph)

    @property
    def name(self) -> str:
        return self.graph.graph["spec"]

    @property
    def mesh(self) -> Mesh:
        return Mesh.from_attributes(self.attrs["mesh"])

    @property
    def context(self) -> int:
        return self.attrs["serve"]["context"]

    @property
    def sequences(self) -> int:
        """Sequences served at once, every replica."""
        return self.attrs["model"]["batch"]

    @property
    def per_microbatch(self) -> int:
        mesh = self.mesh
        return self.sequences // (mesh.dp * mesh.microbatches)

    # memory -----------------------------------------------------------------------------------

    def kv_bytes(self, device: DeviceLoad) -> int:
        """The KV cache a device holds at the planned context: every microbatch of its replica."""
        return device.kv_bytes * self.mesh.microbatches

    def kv_per_token(self, device: DeviceLoad) -> float:
        """KV cache bytes per position of one sequence on a device."""
        return device.kv_bytes / (self.per_microbatch * self.context)

    def largest_batch(self) -> int | None:
        """The most sequences (every replica) whose KV cache at the planned context fits beside
        the weights on every device; None without hardware."""
        if self.hardware is None:
            return None
        most = None
        for device in self.decode.devices:
            per_sequence = self.kv_per_token(device) * self.context
            if per_sequence == 0:
                continue
            room = max(0.0, capacity(self.hardware) - device.weight_bytes)
            fits = int(room // per_sequence)
            most = fits if most is None else min(most, fits)
        return None if most is None else most * self.mesh.dp

    # time ---------------------------------------------------------------------------------------

    def ttft_s(self) -> float:
        """Every microbatch's prefill through the pipeline: the last one's first token."""
        times = self.prefill.stage_times(self.mesh.pp)
        return sum(times) + (self.mesh.microbatches - 1) * max(times)

    def round_s(self) -> float:
        times = self.decode.stage_times(self.mesh.pp)
        return max(sum(times), self.mesh.microbatches * max(times))

    def tpot_s(self) -> float:
        """Time per output token: one decode round gives each sequence its next token."""
        return self.round_s()

    def decode_bubble(self) -> float:
        """The share of a decode round the stages idle, on average."""
        times = self.decode.stage_times(self.mesh.pp)
        busy = self.mesh.microbatches * sum(times) / self.mesh.pp
        return 1 - busy / self.round_s() if self.round_s() else 0.0

    def tokens_per_s(self) -> float:
        """Output tokens per second over every sequence, in decode."""
        return self.sequences / self.tpot_s()

    def request_s(self) -> float:
        """A sequence from its prompt to its last token: the prefill, then generate - 1 rounds."""
        return self.ttft_s() + (self.attrs["serve"]["generate"] - 1) * self.tpot_s()


def spec_serving_cost(compiled: Compiled, hardware: Hardware | None = None) -> ServingCost:
    """The serving cost of a compiled serving spec, on `hardware` or else the spec's own."""
    phases = dict(compiled.phases)
    return serving_cost(phases["prefill"].graph, phases["decode"].graph, hardware=hardware or compiled.deployment.hardware)


def serving_cost(prefill: Dag, decode: Dag, *, hardware: Hardware | None) -> ServingCost:
    clock = Clock(hardware)
    cost = ServingCost(prefill, hardware, _phase("prefill", prefill, clock), _phase("decode", decode, clock))
    return replace(cost, warnings=(*_crossing_nodes(decode, hardware), *_too_big(cost)))


def _too_big(cost: ServingCost) -> Iterable[str]:
    """The first device whose weights and KV cache at the planned context do not fit."""
    hardware = cost.hardware
    if hardware is None:
        return
    for device in cost.decode.devices:
        if device.weight_bytes + cost.kv_bytes(device) > capacity(hardware):
            yield (
                f"gpu {device.rank} (stage {device.stage}) does not fit: weights {device.weight_bytes / 1e9:.4g} GB "
                f"+ KV cache {cost.kv_bytes(device) / 1e9:.4g} GB but {hardware.name} has {hardware.memory_gb:g} GB per device"
            )
            return


def _phase(phase: str, graph: Dag, clock: Clock) -> PhaseCost:
    attrs = graph_attrs(graph)
    dtype_bytes = DTYPE_BYTES[attrs["model"]["dtype"]]
    kv_size = DTYPE_BYTES[attrs["serve"]["kv_dtype"]]
    tokens, context = attrs["microbatch_shape"][1], attrs["serve"]["context"]
    mesh = Mesh.from_attributes(attrs["mesh"])
    loads = {rank: dict(flops=0, weight_bytes=0, weight_read=0, kv_bytes=0, kv_read=0) for rank in range(mesh.world)}
    stages = {rank: mesh.coords(rank)[1] for rank in range(mesh.world)}
    for _, data in graph.nodes(data=True):
        if data["kind"] != "compute":
            continue
        for rank in data["devices"]:
            load = loads[rank]
            load["flops"] += data["flops"]
            held = data["params"] * dtype_bytes
            load["weight_bytes"] += held
            load["weight_read"] += elements(data["out_shape"]) * dtype_bytes if data["op"] in LOOKUPS else held
            if data["op"] == "kv_append":
                cache = elements(data["out_shape"]) * kv_size
                load["kv_bytes"] += cache
                load["kv_read"] += cache if phase == "decode" else cache * tokens // context
    alpha = {rank: 0.0 for rank in range(mesh.world)}
    beta = {rank: 0.0 for rank in range(mesh.world)}
    if clock.hardware is not None:
        for item in transfers(graph):
            if item.phase != "forward" or not item.bytes:
                continue
            _, latency = clock.link(item.group)
            steps = COLLECTIVES[item.kind].ring_steps(len(item.group))
            for rank in item.senders:
                alpha[rank] += steps * latency
                beta[rank] += clock.transfer(item) - steps * latency
    hbm = clock.hardware.hbm_gbps if clock.hardware is not None else None
    devices = []
    for rank, load in loads.items():
        device = DeviceLoad(rank, stages[rank], **load, latency_s=alpha[rank], transfer_s=beta[rank])
        if clock.hardware is not None:
            memory_s = device.read_bytes / (hbm * 1e9) if hbm else 0.0
            device = replace(device, compute_s=clock.compute(device.flops), memory_s=memory_s)
        devices.append(device)
    return PhaseCost(phase, graph, tuple(devices))


def _crossing_nodes(graph: Dag, hardware: Hardware | None) -> Iterable[str]:
    """A tensor-parallel group over more than one node runs its collectives at the network's
    bandwidth and latency: said once, with the first such group."""
    if hardware is None:
        return
    mesh = Mesh.from_attributes(graph_attrs(graph)["mesh"])
    for rank in range(0, mesh.world, mesh.tp):
        group = mesh.tp_group_of(rank)
        nodes = sorted({member // hardware.devices_per_node for member in group})
        if len(nodes) > 1:
            yield (
                f"the tp group of gpu {group[0]}-{group[-1]} spans nodes {', '.join(map(str, nodes))} "
                f"({hardware.devices_per_node} devices per node): its collectives run at {hardware.inter_gbps:g} GB/s "
                f"and {hardware.inter_latency_us:g} us per message, not NVLink's; keep tp within a node"
            )
            return
