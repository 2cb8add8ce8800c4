"""Step-time and memory estimates: alpha-beta ring model, device times, pipeline simulation.

Times come from a Clock. With a hardware description: compute takes flops / (peak x
efficiency) and a transfer takes steps x latency + bytes / bandwidth, on the intra-node links
when every rank of its group sits in one node and on the inter-node links otherwise. Without
one, times are counted in FLOPs and communication takes no time: good for the pipeline
picture and the bubble, not for seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

from par.dsl.checks.deployment import Hardware, Mesh
from par.dsl.cost import schedule as pipeline
from par.dsl.cost.accounting import FP32, RankCost, TrainingState, Transfer
from par.dsl.dag.types import Dag, MeshAttrs, NodeAttrs
from par.dsl.registry.collectives import COLLECTIVES, PIPELINE

BACKWARD_FLOPS = 2  # backward FLOPs per forward FLOP
OUTSIDE_STAGES = (*sorted(PIPELINE), "input", "output")


class Clock:
    """Durations in seconds on `hardware`, or in FLOPs (communication free) when it is None."""

    def __init__(self, hardware: Hardware | None):
        self.hardware = hardware
        self.unit = "s" if hardware else "FLOP"

    def compute(self, flops: float) -> float:
        if self.hardware is None:
            return float(flops)
        return flops / (self.hardware.peak_tflops * 1e12 * self.hardware.efficiency)

    def transfer(self, item: Transfer) -> float:
        if self.hardware is None or not item.bytes:
            return 0.0
        bandwidth, latency = self.link(item.group)
        return COLLECTIVES[item.kind].ring_steps(len(item.group)) * latency + item.bytes / bandwidth

    def link(self, group: Iterable[int]) -> tuple[float, float]:
        """(bytes per second, seconds per message) of the links a group uses."""
        hardware = self.hardware
        assert hardware is not None  # asked only for transfers that take time
        nodes = {rank // hardware.devices_per_node for rank in group}
        if len(nodes) == 1:
            return hardware.intra_gbps * 1e9, hardware.intra_latency_us * 1e-6
        return hardware.inter_gbps * 1e9, hardware.inter_latency_us * 1e-6


@dataclass(frozen=True, slots=True)
class Durations:
    """Every node's forward and backward time."""

    forward: dict[str, float]
    backward: dict[str, float]


def node_durations(graph: Dag, items: Sequence[Transfer], clock: Clock) -> Durations:
    """Forward and backward time of every node (`timed_nodes`)."""
    forward, backward = {}, {}
    for node, _, forward_time, backward_time in timed_nodes(graph, items, clock):
        forward[node], backward[node] = forward_time, backward_time
    return Durations(forward, backward)


def timed_nodes(graph: Dag, items: Sequence[Transfer], clock: Clock) -> Iterator[tuple[str, NodeAttrs, float, float]]:
    """Every node with its attributes, forward time and backward time, in the DAG's order; a
    node's transfers of one kind in one group run at once on their ranks (max), its kinds and
    groups one after another (a recomputed collective and its backward's; under zero 2 a
    sequence-parallel ReduceScatter over tp and the gradients' ReduceScatter over dp). A
    recomputed node's backward runs its forward first. A generator, so that what sums the times
    by device needs no table of every node's (`device_times`)."""
    times: dict[tuple[str, str, str, tuple[int, ...]], float] = {}
    for item in items:
        if item.node is not None:
            key = (item.phase, item.node, item.kind, item.group)
            times[key] = max(times.get(key, 0.0), clock.transfer(item))
    comm: dict[str, dict[str, float]] = {"forward": {}, "backward": {}}  # phase -> node -> its transfers' time
    for (phase, node, _, _), time in times.items():
        phase_comm = comm.setdefault(phase, {})
        phase_comm[node] = phase_comm.get(node, 0.0) + time
    forward_comm, backward_comm, compute_time = comm["forward"], comm["backward"], clock.compute
    for node, data in graph.nodes(data=True):
        compute = compute_time(data["flops"]) if data["kind"] == "compute" else 0.0
        forward = compute + forward_comm.get(node, 0.0)
        again = compute if data.get("recompute") else 0.0
        backward = BACKWARD_FLOPS * compute + again + backward_comm.get(node, 0.0)
        if "ring" in data and data["op"] == "send":  # overlaps the step on the block it passes on: only the rest shows
            overlap = compute_time(overlapped_flops(graph, node))
            forward = max(0.0, forward - overlap)
            backward = max(0.0, backward - BACKWARD_FLOPS * overlap)
        yield node, data, forward, backward


def overlapped_flops(graph: Dag, send: str) -> int:
    """A ring send passes on the block its rank holds while the rank attends to it: the FLOPs
    of that ring step, which hide the transfer where they take longer (docs/cost.md)."""
    rank = graph.nodes[send]["devices"][0]
    (block,) = graph.predecessors(send)
    return sum(
        graph.nodes[step]["flops"]
        for step in graph.successors(block)
        if graph.nodes[step]["op"] == "ring_attention" and graph.nodes[step]["devices"] == [rank]
    )


def device_times(graph: Dag, items: Sequence[Transfer], clock: Clock) -> tuple[dict[int, float], dict[int, float]]:
    """Per rank, the forward and the backward time of its nodes one after another: a device runs
    its ops in turn, and a collective occupies each of its ranks. Sends, receives, input and
    output are left out. One walk over the nodes for both."""
    forward: dict[int, float] = {}
    backward: dict[int, float] = {}
    for _, data, forward_time, backward_time in timed_nodes(graph, items, clock):
        if data["op"] in OUTSIDE_STAGES and "ring" not in data:
            continue
        for rank in data["devices"]:
            forward[rank] = forward.get(rank, 0.0) + forward_time
            backward[rank] = backward.get(rank, 0.0) + backward_time
    return forward, backward


@dataclass(frozen=True, slots=True)
class StageTimes:
    """One microbatch's time on each stage, and on each link between stages."""

    forward: tuple[float, ...]  # one microbatch's forward on each stage (its slowest device); interleaved, on each model chunk
    backward: tuple[float, ...]
    links: tuple[float, ...]  # stage (or model chunk) k -> k+1 transfer of one microbatch
    chunks: int = 1  # model chunks per stage: forward has stages × chunks entries

    @property
    def devices(self) -> int:
        """Pipeline stages: the rows of the schedule."""
        return len(self.forward) // self.chunks


def stage_times(graph: Dag, items: Sequence[Transfer], clock: Clock) -> StageTimes:
    """Each stage's slowest device, forward and backward, and the links between stages."""
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    if mesh.chunks > 1:
        return chunk_times(graph, mesh, node_durations(graph, items, clock), items, clock)
    pp = mesh.pp
    forward: dict[int, float] = {}
    backward: dict[int, float] = {}
    for totals, busy_by_rank in zip((forward, backward), device_times(graph, items, clock), strict=True):
        for rank, busy in busy_by_rank.items():
            stage = mesh.coords(rank)[1]
            totals[stage] = max(totals.get(stage, 0.0), busy)
    links = [0.0] * (pp - 1)
    for item in items:
        if item.phase == "forward" and item.kind == "send" and item.node is not None and "ring" not in graph.nodes[item.node]:
            stage = graph.nodes[item.node]["stage"]
            links[stage] = max(links[stage], clock.transfer(item))
    stages = range(pp)
    return StageTimes(tuple(forward.get(s, 0.0) for s in stages), tuple(backward.get(s, 0.0) for s in stages), tuple(links))


def chunk_times(graph: Dag, mesh: Mesh, durations: Durations, items: Sequence[Transfer], clock: Clock) -> StageTimes:
    """`stage_times` of an interleaved mesh: each model chunk's slowest device, and the link out
    of each chunk. A node belongs to the chunk of its layer; the model's ends to the first chunk
    (stage 0) or the last (stage p - 1)."""
    chunk_of = {layer: chunk for chunk, (first, last) in enumerate(mesh.stages) for layer in range(first, last + 1)}
    last_chunk = len(mesh.stages) - 1
    times = {"forward": [0.0] * len(mesh.stages), "backward": [0.0] * len(mesh.stages)}
    for phase, duration in (("forward", durations.forward), ("backward", durations.backward)):
        busy: dict[tuple[int, int], float] = {}
        for node, data in graph.nodes(data=True):
            if data["op"] in OUTSIDE_STAGES and "ring" not in data:
                continue
            layer = data["layer"]
            chunk = chunk_of[layer] if layer is not None else (0 if data["stage"] == 0 else last_chunk)
            for rank in data["devices"]:
                busy[rank, chunk] = busy.get((rank, chunk), 0.0) + duration[node]
        for (_, chunk), total in busy.items():
            times[phase][chunk] = max(times[phase][chunk], total)
    links = [0.0] * last_chunk
    for item in items:
        if item.phase == "forward" and item.kind == "send" and item.node is not None and "chunk" in graph.nodes[item.node]:
            chunk = graph.nodes[item.node]["chunk"]
            links[chunk] = max(links[chunk], clock.transfer(item))
    return StageTimes(tuple(times["forward"]), tuple(times["backward"]), tuple(links), mesh.chunks)


@dataclass(frozen=True, slots=True)
class StepEstimate:
    """The step time: the pipeline's schedule, then the gradient synchronisation."""

    unit: str  # "s" with hardware, "FLOP" without
    stages: StageTimes
    slots: tuple[pipeline.Slot, ...]
    pipeline: float  # makespan of the m forwards and backwards
    gradient_sync: float  # slowest rank's gradient AllReduces, after the pipeline drains
    microbatch_latency: float  # one microbatch forward through every stage and link in turn

    @property
    def step(self) -> float:
        return self.pipeline + self.gradient_sync

    @property
    def bubble(self) -> float:
        return pipeline.bubble_fraction(self.slots, self.stages.devices)


def estimate_step(graph: Dag, items: Sequence[Transfer], clock: Clock) -> StepEstimate:
    mesh = graph.graph["mesh"]
    times = stage_times(graph, items, clock)
    slots = pipeline.simulate(
        mesh["schedule"],
        forward=times.forward,
        backward=times.backward,
        links=times.links,
        microbatches=mesh["microbatches"],
        chunks=times.chunks,
    )
    sync: dict[int, float] = {}
    for item in items:
        if item.phase == "gradients":
            for rank in item.senders:
                sync[rank] = sync.get(rank, 0.0) + clock.transfer(item)
    return StepEstimate(
        unit=clock.unit,
        stages=times,
        slots=tuple(slots),
        pipeline=pipeline.makespan(slots),
        gradient_sync=max(sync.values(), default=0.0),
        microbatch_latency=sum(times.forward) + sum(times.links),
    )


@dataclass(frozen=True, slots=True)
class Memory:
    """Bytes one device holds at its peak during a step: the training state, the activations of the
    microbatches in flight and, with recompute, a rerun's tensors while its backward runs."""

    weights: int
    grads: int
    master: int
    optimizer: int
    activations_per_microbatch: int
    in_flight: int | Fraction  # microbatches; interleaved, model chunks held / chunks per stage
    rerun: int = 0  # with recompute: what the backward's rerun of one layer holds at once beside them

    @property
    def activations(self) -> int:
        return math.ceil(self.activations_per_microbatch * self.in_flight)

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.master + self.optimizer + self.activations + self.rerun


def in_flight(schedule: str, *, stage: int, stages: int, microbatches: int, chunks: int = 1) -> int | Fraction:
    """Microbatches whose activations a stage holds at once (GPipe: m; 1F1B: min(p - stage, m)).
    Interleaved, the model chunks it holds at once over its v chunks, each a v-th of its layers:
    on stage 0 (v·p + p - 1) / v = p·(1 + (p - 1) / (p·v)) while m·v allows, Korthikanti et al.
    2022's count for the first stage."""
    if schedule == "interleaved":
        passes = pipeline.interleaved_order(stage=stage, stages=stages, microbatches=microbatches, chunks=chunks)
        return Fraction(pipeline.in_flight(passes), chunks)
    order = pipeline.stage_order(schedule, stage=stage, stages=stages, microbatches=microbatches)
    return pipeline.in_flight(order)


def device_memory(cost: RankCost, state: TrainingState, mesh: MeshAttrs) -> Memory:
    """A device's memory; with ZeRO, stage z keeps only its shard (`cost.shard`) of the training
    state it shards: master weights and optimizer state from stage 1, gradients from 2, weights at 3.

    The gradients as model.py keeps them: zero 1 accumulates the whole buffer and ReduceScatters
    it into an fp32 part of its own, what AdamW reads; from zero 2 each microbatch's gradients are
    ReduceScattered at once and added into that fp32 part, the only gradients a rank keeps."""
    zero = mesh.get("zero", 0)

    def held(stage: int) -> int:
        return cost.shard if zero >= stage and cost.shard is not None else cost.params

    if zero == 0:
        grads = cost.params * state.grads
    elif zero == 1:
        grads = cost.params * state.buffer + held(1) * FP32
    else:
        grads = held(2) * FP32
    return Memory(
        weights=held(3) * state.weights,
        grads=grads,
        # fp32 weights are their own master, except their part under zero 2: a copy AdamW updates
        master=held(1) * (state.master or (FP32 if zero == 2 else 0)),
        optimizer=held(1) * state.optimizer,
        activations_per_microbatch=cost.activation_bytes,
        in_flight=in_flight(
            mesh["schedule"], stage=cost.stage, stages=mesh["pp"], microbatches=mesh["microbatches"], chunks=mesh.get("chunks", 1)
        ),
        rerun=cost.rerun_bytes,
    )


def capacity(hardware: Hardware) -> float:
    """Bytes of memory on one device (`memory_gb` counts 10^9 bytes)."""
    return hardware.memory_gb * 1e9


def fits(memory: Memory, hardware: Hardware) -> bool:
    return memory.total <= capacity(hardware)
