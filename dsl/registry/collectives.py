"""Every way a tensor moves between placements or ranks: one declaration each.

The four ring collectives of the tensor-parallel group, the pipeline's send and recv, and the
local slice (a change of placement with no communication). A declaration holds how drawings,
reports and diagnostics name it, the placement change it performs, the bytes each rank sends
and the messages that takes (docs/cost.md's table), the autograd pair that carries it in training,
how a block writes it (for the ones a block may write) and how lint recognises it in DAGs drawn
by other tools. Colours are the drawing's (`par.codegen.dot.style`), keyed by the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from par.dsl.dag.types import CollectiveOp, Kind, PlacementKind
from par.dsl.lowering.placement import E_P, E_R, E_SEQ, S_LAST, S_SEQ, P, Placement, R, Signature, share
from par.dsl.registry.ops import NOTHING, Saves, Syntax


@dataclass(frozen=True, slots=True)
class BackwardPair:
    """An autograd function of the generated code, named after Megatron's mappings: its forward
    does what the declaration it belongs to does; its backward issues `backward` (a collective's
    name, None: nothing) on the gradient of its output."""

    function: str
    backward: CollectiveOp | None


# Not a collective: the identity, on a replicated value entering the tensor-parallel region
# (an op's `enters_tp` variants), whose gradient comes back partial and is summed.
COPY_TO_TP = BackwardPair("copy_to_tp", backward="allreduce")


@dataclass(frozen=True, slots=True)
class Written:
    """How a block writes a collective: `y = allgather(x)`, or `place allgather after x`."""

    syntax: Syntax
    # By dim (None: it takes none). A written collective acts on its input as produced: it is
    # never converted first. The dims are the values its dim argument may take.
    signatures: Mapping[str | None, tuple[Signature, ...]]
    needs: str  # what its input must be, as a diagnostic says it
    default_dim: Callable[[bool], str] | None = None  # given sequence parallelism; None: it must be written

    @property
    def placeable(self) -> bool:
        """`place` writes a collective with its default dim: one that needs a dim without a default cannot be placed."""
        return "dim" not in self.syntax.extras or self.default_dim is not None


@dataclass(frozen=True, slots=True)
class CollectiveSpec:
    """Everything par knows of one collective (docs/architecture.md, The registry)."""

    name: str
    title: str  # drawings and reports: "AllGather"
    prose: str  # diagnostics and reasons: "an AllGather"
    # tp: the tensor-parallel group | ep: the expert-parallel group | pipeline: a rank and its
    # peer on the next stage | local: none
    group: str
    # Bytes each rank sends over a group of n, as a fraction of the full tensor (for send and
    # recv: of the local tensor, which is whole on each side).
    wire_fraction: Callable[[int], Fraction]
    ring_steps: Callable[[int], int]  # messages each rank sends one after another: the latency term
    converts: tuple[PlacementKind, PlacementKind] | None = None  # the placement kinds (from, to) it converts between
    # Token routing over the expert-parallel group: True takes each replica's own tokens to the
    # ranks of their experts (local -> routed), False brings them back; the tensor-parallel
    # placement is kept. None: not a routing.
    routes: bool | None = None
    pair: BackwardPair | None = None  # what carries it in training (None: the plain op, no pair)
    # The pair inside a partial region, where the gradient of its output is partial (an AllGather's).
    partial_pair: BackwardPair | None = None
    written: Written | None = None  # None: only the compiler inserts it
    lint_title: str | None = None  # lint's name for it in findings; None: lint does not look for it
    lint_pattern: str | None = None  # how DAGs drawn by other tools name it (case-insensitive regex)
    lint_as: str | None = None  # the collective lint reads it as in a drawing (a routing is an AllToAll); None: itself
    # What the code keeps of it for the backward: its pairs keep only the group and the dims
    # (they save no tensor), so nothing but for a send, whose tensor the schedule keeps.
    saves: Saves = NOTHING

    @property
    def kind(self) -> Kind:
        """The DAG node kind: `comm`, or `route` for what moves no byte between ranks."""
        return "route" if self.group == "local" else "comm"

    @property
    def sends(self) -> bool:
        """Whether a rank sends bytes for it: the kinds of traffic the cost model counts."""
        return self.kind == "comm" and self.wire_fraction(2) > 0

    def wire_bytes(self, n: int, full_bytes: int) -> int | float:
        """Bytes each of `n` ranks sends for a tensor of `full_bytes`."""
        return share(full_bytes, self.wire_fraction(n))


def _seq_if_sequence_parallel(sequence_parallel: bool) -> str:
    """seq under sequence parallelism, else hidden."""
    return "seq" if sequence_parallel else "hidden"


COLLECTIVES: dict[str, CollectiveSpec] = {
    spec.name: spec
    for spec in (
        CollectiveSpec(
            "allgather", "AllGather", "an AllGather", "tp",
            wire_fraction=lambda n: Fraction(n - 1, n),
            ring_steps=lambda n: n - 1,
            converts=("S", "R"),
            pair=BackwardPair("all_gather", backward=None),
            partial_pair=BackwardPair("all_gather_to_tp", backward="reducescatter"),
            written=Written(
                Syntax(1, usage="allgather(x)"),
                {None: (Signature((S_SEQ,), R), Signature((S_LAST,), R))},
                needs="a split tensor (S)",
            ),
            lint_title="AllGather",
            lint_pattern=r"all[\s_-]?gather",
        ),
        CollectiveSpec(
            "allreduce", "AllReduce", "an AllReduce", "tp",
            wire_fraction=lambda n: Fraction(2 * (n - 1), n),
            ring_steps=lambda n: 2 * (n - 1),
            converts=("P", "R"),
            pair=BackwardPair("all_reduce", backward=None),
            written=Written(Syntax(1, usage="allreduce(x)"), {None: (Signature((P,), R),)}, needs="a partial sum (P)"),
            lint_title="AllReduce",
            lint_pattern=r"all[\s_-]?reduce",
        ),
        CollectiveSpec(
            "reducescatter", "ReduceScatter", "a ReduceScatter", "tp",
            wire_fraction=lambda n: Fraction(n - 1, n),
            ring_steps=lambda n: n - 1,
            converts=("P", "S"),
            pair=BackwardPair("reduce_scatter", backward="allgather"),
            written=Written(
                Syntax(1, ("dim",), optional=1, usage="reducescatter(x[, seq|hidden])"),
                {"seq": (Signature((P,), S_SEQ),), "hidden": (Signature((P,), S_LAST),)},
                needs="a partial sum (P)",
                default_dim=_seq_if_sequence_parallel,
            ),
            lint_title="ReduceScatter",
            lint_pattern=r"reduce[\s_-]?scatter",
        ),
        CollectiveSpec(
            "alltoall", "AllToAll", "an AllToAll", "tp",
            wire_fraction=lambda n: Fraction(n - 1, n * n),
            ring_steps=lambda n: n - 1,
            converts=("S", "S"),  # only between different dims
            pair=BackwardPair("all_to_all", backward="alltoall"),
            written=Written(
                Syntax(1, ("dim",), usage="alltoall(x, seq|hidden)"),
                {"seq": (Signature((S_LAST,), S_SEQ),), "hidden": (Signature((S_SEQ,), S_LAST),)},
                needs="a tensor split along the other dim",
            ),
            lint_title="All-to-All",
            lint_pattern=r"all[\s_-]?to[\s_-]?all|all2all|(?<![a-z0-9])a2a(?![a-z0-9])",
        ),
        # Mixture of experts: each rank sends every member of its expert-parallel group the tokens
        # routed to that member's experts, and gets the results back; under balanced routing
        # (ep - 1)/ep of its own routed tokens leave it each way. The gradient goes back the other way.
        CollectiveSpec(
            "dispatch", "Dispatch (AllToAll)", "a token dispatch (an AllToAll over the expert-parallel group)", "ep",
            wire_fraction=lambda n: Fraction(n - 1, n),
            ring_steps=lambda n: n - 1,
            routes=True,
            pair=BackwardPair("dispatch", backward="combine"),
            lint_as="alltoall",
            written=Written(
                Syntax(1, usage="dispatch(tokens)"),
                {None: (Signature((R,), E_R), Signature((S_SEQ,), E_SEQ))},
                needs="each replica's own tokens grouped by expert (from permute)",
            ),
        ),
        CollectiveSpec(
            "combine", "Combine (AllToAll)", "a token combine (an AllToAll over the expert-parallel group)", "ep",
            wire_fraction=lambda n: Fraction(n - 1, n),
            ring_steps=lambda n: n - 1,
            routes=False,
            pair=BackwardPair("combine", backward="dispatch"),
            lint_as="alltoall",
            written=Written(
                Syntax(1, usage="combine(routed)"),
                {None: (Signature((E_R,), R), Signature((E_P,), P), Signature((E_SEQ,), S_SEQ))},
                needs="routed tokens (E)",
            ),
        ),
        # The backward of a pipeline transfer sends the gradient back the same way (docs/cost.md).
        # The schedule keeps the stage's output until its backward (`y.backward(grad)`).
        CollectiveSpec(
            "send", "Send", "a Send", "pipeline",
            wire_fraction=lambda n: Fraction(1),
            ring_steps=lambda n: 1,
            saves=Saves(operands=(0,)),
            lint_title="Send",
            lint_pattern=r"(?<![a-z])send(?![a-z])",
        ),
        CollectiveSpec(
            "recv", "Recv", "a Recv", "pipeline",
            wire_fraction=lambda n: Fraction(0),
            ring_steps=lambda n: 0,
            lint_title="Recv",
            lint_pattern=r"(?<![a-z])(?:recv|receive)(?![a-z])",
        ),
        CollectiveSpec(
            "slice", "Slice", "a local slice", "local",
            wire_fraction=lambda n: Fraction(0),
            ring_steps=lambda n: 0,
            converts=("R", "S"),
            pair=BackwardPair("scatter_to_tp", backward="allgather"),
        ),
    )
}

def block_form(name: str) -> Written:
    """How a block writes collective `name`, one of those it may write."""
    written = COLLECTIVES[name].written
    if written is None:
        raise KeyError(f"a block does not write {name}")
    return written


# The point-to-point transfers between pipeline stages (send, recv).
PIPELINE = frozenset(name for name, spec in COLLECTIVES.items() if spec.group == "pipeline")

# (from kind, to kind) -> what converts; * -> P is illegal.
CONVERSIONS: dict[tuple[PlacementKind, PlacementKind], CollectiveSpec] = {
    spec.converts: spec for spec in COLLECTIVES.values() if spec.converts is not None
}


def sent_fraction(spec: CollectiveSpec, source: Placement, *, tp: int, ep: int) -> Fraction:
    """What each rank sends of the full tensor of one replica: a tensor-parallel collective's
    wire fraction over tp; a routing's over ep, of the part of the tensor the rank holds (all
    of it, or 1/tp when split on the tensor-parallel axis)."""
    if spec.group == "ep":
        held = Fraction(1, tp) if source.kind == "S" else Fraction(1)
        return spec.wire_fraction(ep) * held
    return spec.wire_fraction(tp)


# True: local -> routed (dispatch); False: routed -> local (combine).
ROUTINGS: dict[bool, CollectiveSpec] = {spec.routes: spec for spec in COLLECTIVES.values() if spec.routes is not None}


def conversion(source: Placement, target: Placement) -> CollectiveSpec | None:
    """What converts `source` to `target`; None when they are equal or it is illegal. Routing
    keeps the tensor-parallel placement: a change of both takes two steps."""
    if source == target:
        return None
    if source.routed != target.routed:
        return ROUTINGS[target.routed] if source.local == target.local else None
    return CONVERSIONS.get((source.kind, target.kind))
