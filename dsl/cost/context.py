"""Context parallelism in the cost: each rank's part of the sequence, the attention work per
ring step, the bytes a step passes on and whether the step's compute hides them (docs/cost.md,
Context parallelism). Read from the DAG, as the rest of the cost model."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from par.dsl.cost.accounting import Transfer
from par.dsl.cost.estimate import Clock, overlapped_flops
from par.dsl.dag.types import Dag


@dataclass(frozen=True, slots=True)
class ContextCost:
    """Context parallelism's attention on one rank: its tokens, FLOPs and ring steps."""

    cp: int
    algorithm: str  # ring | allgather
    tokens: int  # of one sequence, on each rank (chunks c and 2·cp − 1 − c)
    attention_flops: int  # one layer's attention on one rank, forward, every step (the full score matrix, as par counts it)
    step_flops: int  # one ring step's (ring), or the one attention's (allgather)
    step_bytes: int | float  # sent by each rank per step (ring), or per AllGather
    step_compute: float  # the clock's time of a step's attention (s, or FLOPs without hardware)
    step_transfer: float  # the clock's time of a step's transfer (0 without hardware)
    unbalanced: Fraction  # the busiest rank's causal work over the average, were the sequence cut in cp contiguous parts

    @property
    def hidden(self) -> bool:
        """Whether a step's compute takes at least as long as the transfer it overlaps."""
        return self.step_transfer <= self.step_compute

    @property
    def exposed(self) -> float:
        return max(0.0, self.step_transfer - self.step_compute)


def context_cost(graph: Dag, clock: Clock) -> ContextCost | None:
    """None without context parallelism."""
    mesh = graph.graph["mesh"]
    cp = mesh.get("cp", 1)
    if cp == 1:
        return None
    algorithm = mesh.get("cp_attention", "ring")
    model = graph.graph["model"]
    nodes = graph.nodes
    steps = [n for n, d in nodes(data=True) if d["op"] == "ring_attention"]
    first = steps[0]
    rank, layer = nodes[first]["devices"][0], nodes[first]["layer"]
    mine = [n for n in steps if nodes[n]["layer"] == layer and nodes[n]["devices"] == [rank]]
    if algorithm == "ring":
        send = next(n for n, d in nodes(data=True) if d["op"] == "send" and "ring" in d)
        data = nodes[send]
        item = Transfer("forward", "send", send, (data["devices"][0], data["peer"]), (data["devices"][0],), data["wire_bytes"])
        step_flops = overlapped_flops(graph, send)
    else:
        gather = next(n for n, d in nodes(data=True) if d["op"] == "allgather" and d["name"].startswith("allgather_kv_"))
        data = nodes[gather]
        group = tuple(data["devices"])
        item = Transfer("forward", "allgather", gather, group, group, data["wire_bytes"])
        step_flops = nodes[mine[0]]["flops"]
    return ContextCost(
        cp=cp,
        algorithm=algorithm,
        tokens=model["seq"] // cp,
        attention_flops=sum(nodes[n]["flops"] for n in mine),
        step_flops=step_flops,
        step_bytes=item.bytes,
        step_compute=clock.compute(step_flops),
        step_transfer=clock.transfer(item),
        unbalanced=Fraction(2 * cp - 1, cp),
    )
