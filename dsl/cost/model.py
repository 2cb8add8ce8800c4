"""The cost of one deployment, gathered from its DAG: what `par cost` prints and report.md shows."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from par.dsl.checks.deployment import Hardware
from par.dsl.compiler import Compiled
from par.dsl.cost import schedule as pipeline
from par.dsl.cost.accounting import (
    RankCost,
    TrainingState,
    Transfer,
    model_parameters,
    rank_costs,
    saved_tensors,
    step_kinds,
    training_state,
    transfers,
)
from par.dsl.cost.context import ContextCost, context_cost
from par.dsl.cost.estimate import (
    BACKWARD_FLOPS,
    Clock,
    Memory,
    StepEstimate,
    device_memory,
    estimate_step,
    fits,
)
from par.dsl.cost.experts import ExpertCost, expert_cost
from par.dsl.dag.types import Dag, MeshAttrs, ModelAttrs, graph_attrs


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """Devices whose numbers are all equal, shown as one row."""

    ranks: tuple[int, ...]
    cost: RankCost  # the first of them
    memory: Memory


@dataclass(frozen=True, slots=True)
class Cost:
    """A spec's cost, read from its DAG: per device, per group, and the step estimate."""

    graph: Dag
    hardware: Hardware | None
    state: TrainingState
    transfers: tuple[Transfer, ...]
    devices: tuple[RankCost, ...]
    groups: tuple[DeviceGroup, ...]
    model_params: int
    estimate: StepEstimate
    experts: ExpertCost | None = None  # a model with experts: active parameters, routing bytes
    context: ContextCost | None = None  # context parallelism: the ring's steps, bytes and overlap

    @property
    def mesh(self) -> MeshAttrs:
        return graph_attrs(self.graph)["mesh"]

    @property
    def recompute(self) -> str:
        """The mesh's recomputation: none, selective or full (the mesh leaves out none)."""
        return self.mesh.get("recompute", "none")

    @property
    def model(self) -> ModelAttrs:
        return graph_attrs(self.graph)["model"]

    @property
    def name(self) -> str:
        return self.graph.graph["spec"]

    @property
    def closed_form_bubble(self) -> Fraction:
        mesh = self.mesh
        return pipeline.closed_form_bubble(stages=mesh["pp"], microbatches=mesh["microbatches"], chunks=mesh.get("chunks", 1))

    def too_big(self) -> list[DeviceGroup]:
        """Groups whose peak memory exceeds the hardware's; empty without hardware."""
        if self.hardware is None:
            return []
        return [group for group in self.groups if not fits(group.memory, self.hardware)]

    def step_comm(self, cost: RankCost) -> float:
        """Bytes a device sends in a training step, every phase."""
        return sum(step_kinds(cost.comm, microbatches=self.mesh["microbatches"]).values())

    def step_flops(self, cost: RankCost) -> float:
        """Forward and backward FLOPs of a training step on a device."""
        return (1 + BACKWARD_FLOPS) * cost.flops * self.mesh["microbatches"]

    def run_flops(self) -> float:
        """What every device computes in a training step: forward, backward and the forward that
        `recompute` runs again (Megatron-LM's count of a step's FLOPs)."""
        return sum(self.step_flops(device) + self.recompute_step_flops(device) for device in self.devices)

    def recompute_step_flops(self, cost: RankCost) -> float:
        """Forward FLOPs a device's backward runs again in a training step (`recompute`), beside `step_flops`."""
        return cost.recompute_flops * self.mesh["microbatches"]


def cost_of(graph: Dag, *, hardware: Hardware | None) -> Cost:
    """Everything the report says about a deployment, from its DAG and (optionally) hardware."""
    state = training_state(graph.graph["model"]["dtype"], graph.graph["mesh"]["grad_dtype"])
    items = tuple(transfers(graph))
    kept = saved_tensors(graph)  # the devices' activations and the experts' share of them
    devices = tuple(rank_costs(graph, items=items, kept=kept))
    groups: dict[tuple, list[RankCost]] = {}
    for cost in devices:
        groups.setdefault(cost.signature(), []).append(cost)
    mesh = graph.graph["mesh"]
    params = model_parameters(graph)
    rows = tuple(
        DeviceGroup(tuple(c.rank for c in members), members[0], device_memory(members[0], state, mesh))
        for members in groups.values()
    )
    return Cost(
        graph=graph,
        hardware=hardware,
        state=state,
        transfers=items,
        devices=devices,
        groups=tuple(sorted(rows, key=lambda group: (group.cost.stage, group.ranks))),
        model_params=params,
        estimate=estimate_step(graph, items, Clock(hardware)),
        experts=expert_cost(graph, params, kept),
        context=context_cost(graph, Clock(hardware)),
    )


def spec_cost(compiled: Compiled) -> Cost:
    """The cost of a compiled spec on the hardware the spec names (none: no step time)."""
    return cost_of(compiled.graph, hardware=compiled.deployment.hardware)
