"""Placement types on the tensor-parallel axis, the conversions between them, and op signatures.

Tensors in a block are [batch, seq, features]. On the tensor-parallel axis a tensor is
replicated (R), a partial sum (P), or split along seq (S(seq)) or features (S(-1)).
Both tables below are data: lowering reads them and never special-cases an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True, order=True)
class Placement:
    kind: str  # "R" | "P" | "S"
    dim: int | None = None  # S only: 1 = seq, 2 = features

    def __str__(self) -> str:
        if self.kind != "S":
            return self.kind
        return "S(seq)" if self.dim == 1 else "S(-1)"

    def local_shape(self, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
        if self.kind != "S":
            return shape
        return tuple(size // n if axis == self.dim else size for axis, size in enumerate(shape))


R = Placement("R")
P = Placement("P")
S_SEQ = Placement("S", 1)
S_LAST = Placement("S", 2)
DIMS = {"seq": S_SEQ, "hidden": S_LAST}  # the dims a spec names, as split placements


def dim_name(placement: Placement) -> str:
    """The spec's name of the dim a split placement splits: `seq` or `hidden`."""
    return "seq" if placement == S_SEQ else "hidden"


def stream_placement(sequence_parallel: bool) -> Placement:
    """Where the residual stream lives between layers: split along seq under sequence parallelism."""
    return S_SEQ if sequence_parallel else R


@dataclass(frozen=True, slots=True)
class Conversion:
    """How a tensor changes placement: the collective (or local slice) and its ring traffic."""

    op: str  # allreduce | reducescatter | allgather | alltoall | slice
    kind: str  # comm | route

    def wire_fraction(self, n: int) -> Fraction:
        """Bytes each rank sends, as a fraction of the full tensor (docs/cost.md's table)."""
        return _WIRE[self.op](n)

    def wire_bytes(self, n: int, full_bytes: int) -> int | float:
        """Bytes each rank sends for a full tensor of `full_bytes`."""
        return share(full_bytes, self.wire_fraction(n))


def share(full_bytes: int, fraction: Fraction) -> int | float:
    """`fraction` of `full_bytes`: a whole number of bytes when it divides exactly."""
    sent, remainder = divmod(full_bytes * fraction.numerator, fraction.denominator)
    return sent if not remainder else full_bytes * fraction.numerator / fraction.denominator


_WIRE = {
    "allreduce": lambda n: Fraction(2 * (n - 1), n),
    "reducescatter": lambda n: Fraction(n - 1, n),
    "allgather": lambda n: Fraction(n - 1, n),
    "alltoall": lambda n: Fraction(n - 1, n * n),
    "slice": lambda n: Fraction(0),
}

# (from kind, to kind) -> conversion; S -> S only between different dims; * -> P is illegal.
CONVERSIONS: dict[tuple[str, str], Conversion] = {
    ("P", "R"): Conversion("allreduce", "comm"),
    ("P", "S"): Conversion("reducescatter", "comm"),
    ("S", "R"): Conversion("allgather", "comm"),
    ("S", "S"): Conversion("alltoall", "comm"),
    ("R", "S"): Conversion("slice", "route"),
}


def conversion(source: Placement, target: Placement) -> Conversion | None:
    """The conversion from `source` to `target`; None when they are equal or it is illegal."""
    if source == target:
        return None
    return CONVERSIONS.get((source.kind, target.kind))


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[Placement, ...]
    output: Placement
    mode: str = "any"  # any | sp (only under sequence parallelism) | no_sp (only without it)


def _same(*placements: Placement, arity: int) -> list[Signature]:
    return [Signature((p,) * arity, p) for p in placements]


# Norms run where the residual stream lives: replicated, or split along seq under sequence
# parallelism (which is what makes the stream stay split there).
_NORM = [Signature((R,), R, mode="no_sp"), Signature((S_SEQ,), S_SEQ, mode="sp")]


# What each op accepts and produces on the tensor-parallel axis, in order of preference.
SIGNATURES: dict[str, list[Signature]] = {
    "layernorm": _NORM,
    "rmsnorm": _NORM,
    "linear:column": [Signature((R,), S_LAST)],
    "linear:row": [Signature((S_LAST,), P)],
    "linear:replicated": [Signature((R,), R), Signature((S_SEQ,), S_SEQ, mode="sp")],
    # S(-1) of a fused QKV is head-aligned: each rank holds whole Q, K and V heads.
    "attention": [Signature((S_LAST,), S_LAST), Signature((R,), R)],
    # Nonlinear elementwise ops: anything but a partial sum.
    "gelu": _same(R, S_SEQ, S_LAST, arity=1),
    "silu": _same(R, S_SEQ, S_LAST, arity=1),
    # add is linear, so P + P is fine; mul is not.
    "add": _same(R, S_SEQ, S_LAST, P, arity=2),
    "mul": _same(R, S_SEQ, S_LAST, arity=2),
}

# A written collective acts on its input exactly as produced: it is never converted first.
COLLECTIVE_SIGNATURES: dict[str, list[Signature]] = {
    "allreduce": [Signature((P,), R)],
    "allgather": [Signature((S_SEQ,), R), Signature((S_LAST,), R)],
    "reducescatter:seq": [Signature((P,), S_SEQ)],
    "reducescatter:hidden": [Signature((P,), S_LAST)],
    "alltoall:seq": [Signature((S_LAST,), S_SEQ)],
    "alltoall:hidden": [Signature((S_SEQ,), S_LAST)],
}

COLLECTIVE_NEEDS = {
    "allreduce": "a partial sum (P)",
    "allgather": "a split tensor (S)",
    "reducescatter": "a partial sum (P)",
    "alltoall": "a tensor split along the other dim",
}


def signature_key(op: str, style: str | None, dim: str | None) -> str:
    if op == "linear":
        return f"linear:{style}"
    if op in ("reducescatter", "alltoall"):
        return f"{op}:{dim}"
    return op


def signatures(op: str, style: str | None, dim: str | None, *, sequence_parallel: bool) -> list[Signature]:
    key = signature_key(op, style, dim)
    table = COLLECTIVE_SIGNATURES if key in COLLECTIVE_SIGNATURES else SIGNATURES
    excluded = "no_sp" if sequence_parallel else "sp"
    return [s for s in table[key] if s.mode != excluded]


def describe(placement: Placement) -> str:
    return {
        "R": "replicated (R)",
        "P": "a partial sum (P)",
    }.get(placement.kind, f"split along {'seq' if placement.dim == 1 else 'features'} ({placement})")
