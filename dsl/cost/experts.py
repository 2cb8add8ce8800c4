"""Mixture of experts in the cost: parameters a token goes through, and the token routing's bytes
at balanced routing and at the capacity factor's worst case (docs/cost.md, Mixture of experts).
Read from the DAG, as the rest of the cost model."""

from __future__ import annotations

from dataclasses import dataclass

from par.dsl.checks.deployment import Mesh
from par.dsl.cost.accounting import saved_tensors
from par.dsl.dag.types import Dag, ExpertAttrs
from par.dsl.lowering.placement import PLACEMENTS
from par.dsl.registry.collectives import COLLECTIVES


@dataclass(frozen=True, slots=True)
class ExpertCost:
    """A mixture of experts' parameters and routing traffic."""

    settings: ExpertAttrs
    ep: int
    moe_layers: int  # layers with routed experts
    dense_layers: int
    routed_params: int  # distinct parameters of the routed experts, all of them
    active_params: int  # distinct parameters one token goes through: the rest, and top_k of each layer's experts
    routing_bytes: int | float  # sent per microbatch by the busiest device, dispatch and combine, balanced routing
    routing_worst: int | float  # the same when experts get capacity_factor times their share
    # Routed tensors (the dispatched tokens and what the experts make of them) that the busiest
    # device keeps for the backward of one microbatch, balanced; part of its activations.
    routed_activations: int = 0

    @property
    def local_experts(self) -> int:
        return self.settings["experts"] // self.ep

    @property
    def routed_activations_worst(self) -> float:
        """The routed tensors when this device's experts get capacity_factor times their share."""
        return self.routed_activations * self.settings["capacity_factor"]


def expert_cost(graph: Dag, model_params: int, kept: dict[int, dict[tuple, int]] | None = None) -> ExpertCost | None:
    """None for a model without experts. `model_params`: its distinct parameters (accounting);
    `kept`: its `saved_tensors`, if already known."""
    settings = graph.graph["model"].get("moe")
    if settings is None:
        return None
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    routed = 0
    moe_layers: set[int] = set()
    balanced: list[int | float] = [0] * mesh.world
    worst: list[int | float] = [0] * mesh.world
    for _, data in graph.nodes(data=True):
        if data["kind"] == "compute" and PLACEMENTS[data.get("in_placement", "R")].routed:
            dp_rank, _, tp_rank = mesh.coords(data["devices"][0])
            if data["layer"] is not None:
                moe_layers.add(data["layer"])
            sharded = data.get("style") in ("column", "row")
            if dp_rank < mesh.ep and (sharded or tp_rank == 0):
                routed += data["params"]
        elif data["kind"] == "comm" and COLLECTIVES[data["op"]].routes is not None:
            for rank in data["devices"]:
                balanced[rank] += data["wire_bytes"]
                worst[rank] += data.get("wire_bytes_worst", data["wire_bytes"])
    skipped = routed * (settings["experts"] - settings["top_k"]) // settings["experts"]
    if kept is None:
        kept = saved_tensors(graph)
    routed_kept = [
        sum(size for key, size in tensors.items() if PLACEMENTS[graph.nodes[key[0]].get("out_placement", "R")].routed)
        for tensors in kept.values()
    ]
    return ExpertCost(
        settings=settings,
        ep=mesh.ep,
        moe_layers=len(moe_layers),
        dense_layers=graph.graph["layers"] - len(moe_layers),
        routed_params=routed,
        active_params=model_params - skipped,
        routing_bytes=max(balanced),
        routing_worst=max(worst),
        routed_activations=max(routed_kept),
    )
