"""Placement types on the tensor-parallel axis, and the signature an op declares in them.

Tensors in a block are [batch, seq, features]. On the tensor-parallel axis a tensor is
replicated (R), a partial sum (P), or split along seq (S(seq)) or features (S(-1)).
Routed tokens of a mixture-of-experts layer are [experts, tokens, features]; on the
expert-parallel axis they are either each replica's own (as every other tensor) or routed:
split along experts over the expert-parallel group, each rank holding its local experts' tokens
from every member (`E(...)`, with the tensor-parallel placement inside).
Which op accepts and gives what, and which collective converts what, is declared in the
registry (par.dsl.registry); lowering reads it and never special-cases an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import cast

from par.dsl.dag.types import PlacementKind, PlacementText


@dataclass(frozen=True, slots=True, order=True)
class Placement:
    """How a tensor lies on the tensor-parallel group: replicated, split along a dim, or a partial
    sum; routed, split along experts over the expert-parallel group as well."""

    kind: PlacementKind
    dim: int | None = None  # S only: 1 = seq (routed tokens: tokens), 2 = features
    routed: bool = False  # split along experts over the expert-parallel group

    def __str__(self) -> str:
        return self.text

    @property
    def text(self) -> PlacementText:
        """How DAG nodes, drawings and reports write it."""
        inner = self.kind if self.kind != "S" else ("S(seq)" if self.dim == 1 else "S(-1)")
        return cast(PlacementText, f"E({inner})" if self.routed else inner)

    def local_shape(self, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
        """The shape on one rank of a tensor-parallel group of `n` (routed: after `routed_shape`)."""
        if self.kind != "S":
            return shape
        return tuple(size // n if axis == self.dim else size for axis, size in enumerate(shape))

    @property
    def local(self) -> Placement:
        """The same placement on the tensor-parallel axis, each replica's own tokens."""
        return Placement(self.kind, self.dim)

    @property
    def to_routed(self) -> Placement:
        return Placement(self.kind, self.dim, routed=True)


def routed_shape(shape: tuple[int, ...], ep: int) -> tuple[int, ...]:
    """Routed tokens [experts, tokens, features] of one replica as one rank of an expert-parallel
    group of `ep` holds them under balanced routing: its experts' share of every member's tokens."""
    experts, tokens, *rest = shape
    return (experts // ep, tokens * ep, *rest)


R = Placement("R")
P = Placement("P")
S_SEQ = Placement("S", 1)
S_LAST = Placement("S", 2)
E_R, E_P, E_SEQ, E_LAST = R.to_routed, P.to_routed, S_SEQ.to_routed, S_LAST.to_routed
# By how DAG nodes write them.
PLACEMENTS: dict[PlacementText, Placement] = {p.text: p for p in (R, P, S_SEQ, S_LAST, E_R, E_P, E_SEQ, E_LAST)}


def dim_name(placement: Placement) -> str:
    """The spec's name of the dim a split placement splits: `seq` or `hidden`."""
    return "seq" if placement == S_SEQ else "hidden"


def stream_placement(sequence_parallel: bool) -> Placement:
    """Where the residual stream lives between layers: split along seq under sequence parallelism."""
    return S_SEQ if sequence_parallel else R


def share(full_bytes: int, fraction: Fraction) -> int | float:
    """`fraction` of `full_bytes`: a whole number of bytes when it divides exactly."""
    sent, remainder = divmod(full_bytes * fraction.numerator, fraction.denominator)
    return sent if not remainder else full_bytes * fraction.numerator / fraction.denominator


@dataclass(frozen=True, slots=True)
class Signature:
    """The placements an op accepts and the one it gives."""

    inputs: tuple[Placement, ...]
    output: Placement
    mode: str = "any"  # any | sp (only under sequence parallelism) | no_sp (only without it)


def describe(placement: Placement) -> str:
    if placement.routed:
        return f"routed to its experts' ranks and {describe(placement.local)}"
    return {
        "R": "replicated (R)",
        "P": "a partial sum (P)",
    }.get(placement.kind, f"split along {'seq' if placement.dim == 1 else 'features'} ({placement})")
