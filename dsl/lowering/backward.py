"""The backward communication of a layer: which forward/backward pair carries each step.

The DAG is one forward microbatch; a training step also runs the backward, whose collectives
follow from the forward ones (docs/pytorch.md, the forward/backward pairs). They are decided here, once, and read
by the generated code (which emits the pair's autograd function) and by the cost model
(which counts the pair's backward collective; `par.dsl.dag.expand` writes it on the DAG's nodes).

The gradient of a replicated (R) tensor is whole on every rank, except in the *partial
region* of an AllGather: what its result reaches through replicated ops without parameters
(attention, gelu, add, ...) when every use in the region ends in an op whose output differs
per tensor-parallel rank (a column-parallel linear, a slice) and none is the layer's result.
There gradients are partial sums, and the AllGather's backward is a ReduceScatter, which sums
them (Megatron's sequence-parallel gather). Elsewhere:

* an R tensor entering column-parallel linears goes through `copy_to_tp` (identity forward,
  AllReduce of the partial input gradient in backward), once per tensor (`Step.copied`);
* an R tensor that is only sliced goes through `scatter_to_tp` (slice forward, AllGather of
  the gradient in backward); a slice inside a partial region, or of a tensor that went
  through `copy_to_tp`, is a plain local slice (no pair): its partial gradient is reduced there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from par.dsl.dag.types import CollectiveOp
from par.dsl.lowering.placement import Placement, R
from par.dsl.lowering.program import Step
from par.dsl.registry.collectives import COLLECTIVES, COPY_TO_TP
from par.dsl.registry.ops import OPS


@dataclass(frozen=True, slots=True)
class Pair:
    """An autograd function of the generated code: the collective its forward and its backward issue."""

    forward: str | None  # allreduce | allgather | reducescatter | alltoall; None: no communication
    backward: CollectiveOp | None  # on the gradient of the forward's output


# Named after Megatron's mappings; model.py defines a function of each name it uses. Each is
# declared with what it carries (par.dsl.registry.collectives).
PAIRS: dict[str, Pair] = {COPY_TO_TP.function: Pair(None, COPY_TO_TP.backward)} | {
    declared.function: Pair(spec.name if spec.kind == "comm" else None, declared.backward)
    for spec in COLLECTIVES.values()
    for declared in (spec.pair, spec.partial_pair)
    if declared is not None
}


def backward_wire_bytes(kind: str, n: int, full_bytes: int) -> int | float:
    """Bytes each of `n` ranks sends for a backward collective `kind` on a gradient of `full_bytes` (whole tensor)."""
    return COLLECTIVES[kind].wire_bytes(n, full_bytes)


def backward_kind(step: Step) -> CollectiveOp | None:
    """The collective the backward issues on the gradient of the step's output, if any.

    At most one: the pairs with a backward collective give a split output or one inside a
    partial region, and neither goes through `copy_to_tp`."""
    if step.copied:
        return COPY_TO_TP.backward
    return PAIRS[step.pair].backward if step.pair else None


def with_pairs(steps: tuple[Step, ...], param: str, result: str, stream: Placement) -> tuple[tuple[Step, ...], bool]:
    """The steps with `pair` and `copied` decided, and whether the layer input goes through `copy_to_tp`."""
    consumers: dict[str, list[Step]] = {}
    for step in steps:
        for value in dict.fromkeys(step.inputs):
            consumers.setdefault(value, []).append(step)
    gathered: set[str] = set()
    partial: set[str] = set()
    for step in steps:
        if step.kind == "comm" and COLLECTIVES[step.op].partial_pair is not None:
            region = _partial_region(step.name, consumers, result)
            if region:
                gathered.add(step.name)
                partial |= region
    replicated = ([param] if stream == R else []) + [step.name for step in steps if step.out_placement == R]
    copied = {
        value for value in replicated if value not in partial and any(_takes_copy(step) for step in consumers.get(value, []))
    }

    def pair(step: Step) -> str | None:
        if step.kind == "comm":
            spec = COLLECTIVES[step.op]
            declared = spec.partial_pair if step.name in gathered else spec.pair
        elif step.kind == "route" and step.inputs[0] not in copied | partial:
            declared = COLLECTIVES[step.op].pair
        else:
            return None
        assert declared is not None  # every tensor-parallel collective and the slice declare their pair
        return declared.function

    paired = tuple(replace(step, pair=pair(step), copied=step.name in copied) for step in steps)
    return paired, param in copied


def _partial_region(gathered: str, consumers: dict[str, list[Step]], result: str) -> set[str]:
    """What an AllGather's result reaches through ops that pass a partial gradient, if that is clean.

    Clean: every value of the region is used only by ops that give it a partial gradient
    (column-parallel linears, slices, or ops without parameters whose inputs all lie in the
    region), and none is the layer's result. Otherwise the region is empty.
    """
    region, frontier = {gathered}, [gathered]
    while frontier:
        for step in consumers.get(frontier.pop(), []):
            if _passes_partial(step) and step.name not in region:
                region.add(step.name)
                frontier.append(step.name)
    for value in region:
        users = consumers.get(value, [])
        if value == result or not users:
            return set()
        for step in users:
            if not (_enters_tp(step) or (_passes_partial(step) and set(step.inputs) <= region)):
                return set()
    return region


def _takes_copy(step: Step) -> bool:
    """Ops whose input gradient is partial although the input is replicated (`OpSpec.enters_tp`)."""
    return step.kind == "compute" and step.style in OPS[step.op].enters_tp


def _enters_tp(step: Step) -> bool:
    """Consumers whose output differs per tensor-parallel rank: their input gradient is partial."""
    return step.kind == "route" or _takes_copy(step)


def _passes_partial(step: Step) -> bool:
    """Replicated ops without parameters: a partial output gradient gives partial input gradients,
    and no parameter gradient is left partial."""
    return step.kind == "compute" and not step.params and step.out_placement == R
