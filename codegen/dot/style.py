"""How each kind of node looks: the conventions of hand-drawn parallel-deployment DAGs.

Rectangle = computation, ellipse = communication, parallelogram = split / aggregate / route.
Collectives are coloured by kind (the same colour for the ellipse and for its edges).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from par.dsl.dag.types import NodeAttrs
from par.dsl.registry.collectives import COLLECTIVES


@dataclass(frozen=True, slots=True)
class Look:
    """A node's shape and colours."""

    shape: str
    fill: str
    border: str
    style: str = "filled"


COMPUTE = Look("box", "#f4f6f8", "#4a5560", "filled,rounded")
ROUTE = Look("parallelogram", "#fff6d5", "#9a7d0a")
ENDPOINT = Look("parallelogram", "#e3e7ec", "#2f3a45")  # input, output
FOLDED = Look("box3d", "#eef1f4", "#6b7785")

# The look of each communication in the registry (par.dsl.registry.collectives), in legend
# order. Send and Recv share a colour: one transfer.
LOOKS = {
    "allreduce": Look("ellipse", "#fde0c5", "#d9600c"),
    "allgather": Look("ellipse", "#d4e6f7", "#1f6fb4"),
    "reducescatter": Look("ellipse", "#e4dcf2", "#6a4fb0"),
    "alltoall": Look("ellipse", "#d5efd9", "#2a8a3e"),
    # Token routing over the expert-parallel group: the AllToAll's shape, its own colour.
    "dispatch": Look("ellipse", "#fde2c8", "#c05a00"),
    "combine": Look("ellipse", "#fde2c8", "#c05a00"),
    "send": Look("ellipse", "#fbd5d5", "#c0282d"),
    "recv": Look("ellipse", "#fbd5d5", "#c0282d"),
}
SEND_RECV = "Send/Recv"

EDGE_COLOUR = "#7b8794"
CLUSTER_STAGE = ("#fafbfc", "#8a96a3")  # fill, border
CLUSTER_REPLICA = ("#f5f7f9", "#a5afba")
CLUSTER_GPU = ("#ffffff", "#c3cad2")


def display_name(op: str) -> str:
    """`AllGather`, `Send`, ...; other ops as written."""
    return COLLECTIVES[op].title if op in COLLECTIVES else op


def look_of(data: NodeAttrs) -> Look:
    """The look of a DAG node from its attributes."""
    if data["kind"] == "comm":
        return LOOKS.get(data["op"], Look("ellipse", "#eeeeee", "#555555"))
    if data["kind"] == "route":
        return ENDPOINT if data["op"] in ("input", "output") else ROUTE
    return COMPUTE


def legend_entries(ops: AbstractSet[str], has_route: bool, *, folded: bool = False) -> list[tuple[str, Look]]:
    """(caption, look) for every shape and colour that appears, in a fixed order."""
    entries = [("computation", COMPUTE)]
    if folded:
        entries.append(("folded layers", FOLDED))
    if has_route:
        entries.append(("split / route (no communication)", ROUTE))
    for op, look in LOOKS.items():
        if op == "recv":
            continue
        if op == "send" and "send" in ops:
            entries.append((SEND_RECV, look))
        elif op in ops and op != "send":
            entries.append((display_name(op), look))
    return entries
