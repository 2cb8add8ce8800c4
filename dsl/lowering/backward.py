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
them (Megatron's sequence-parallel gather), unless each rank's uses read only its own part
(below). Elsewhere:

* an R tensor entering column-parallel linears goes through `copy_to_tp` (identity forward,
  AllReduce of the partial input gradient in backward), once per tensor (`Step.copied`); so does
  an R operand of an op that gives a partial sum (the router's scores weighting the experts'
  partial results in `unpermute`: its gradient is partial too);
* an R tensor that is only sliced goes through `scatter_to_tp` (slice forward, AllGather of
  the gradient in backward); a slice inside a partial region, or of a tensor that went
  through `copy_to_tp`, is a plain local slice (no pair): its partial gradient is reduced there.

**ReduceScatters of zeros are elided.** Take an AllGather along dim d whose partial region is
clean, and cut every value of the region into n parts along d (n: the tensor-parallel size;
part k of the gathered tensor is what rank k held). If

1. every op of the region keeps parts apart along d (`OpSpec.keeps_parts`: part k of its
   output depends only on part k of each input, and all its inputs lie in the region), and
2. every use that leaves the region is a slice along d (which keeps this rank's part),

then rank r's uses read only part r of the gathered tensor: the gradient rank r computes for
it is zero outside part r, so the ReduceScatter's sum, cut to part r, is rank r's own gradient
cut to part r. Such an AllGather is carried by the pair that keeps this rank's part of the
gradient (a local slice, nothing sent), and the step records why (`Step.backward_reason`).
Anything else keeps the ReduceScatter: a column-parallel linear reads every part, attention
over a sequence split mixes positions, a slice along the other dim reads every part. In the
baseline, `allgather_qkv -> attention -> slice_ctx` (attention keeps heads apart, the slice
takes this rank's heads) and `allgather_mlp -> gelu -> slice_act` are elided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from par.dsl.dag.types import CollectiveOp
from par.dsl.lowering.placement import P, Placement, R, dim_name
from par.dsl.lowering.program import Step
from par.dsl.registry.collectives import COLLECTIVES, COPY_TO_TP
from par.dsl.registry.ops import COMPUTE_OPS, OPS


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
    elided: dict[str, str] = {}  # AllGather -> why its backward keeps this rank's part
    for step in steps:
        if step.kind == "comm" and COLLECTIVES[step.op].partial_pair is not None:
            region = _partial_region(step.name, consumers, result)
            if region:
                reason = _own_part_only(step, region, steps)
                if reason is None:
                    gathered.add(step.name)
                else:
                    elided[step.name] = reason
                partial |= region
    # Replicated on the tensor-parallel axis: each replica's own tokens, or routed ones.
    replicated = ([param] if stream == R else []) + [step.name for step in steps if step.out_placement.local == R]
    copied = {
        value for value in replicated if value not in partial and any(_takes_copy(step) for step in consumers.get(value, []))
    }
    # A token dispatch is linear: the copy goes before it, on each replica's own tokens, so the
    # dispatch keeps its own pair (the combine of the gradient) and each step one backward collective.
    routed_by = {step.name: step.inputs[0] for step in steps if step.kind == "comm" and COLLECTIVES[step.op].routes}
    while copied & routed_by.keys():
        copied = {routed_by.get(value, value) for value in copied}

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

    paired = tuple(
        replace(step, pair=pair(step), copied=step.name in copied, backward_reason=elided.get(step.name))
        for step in steps
    )
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


def _own_part_only(gather: Step, region: set[str], steps: tuple[Step, ...]) -> str | None:
    """Why each rank's uses of a gathered tensor read only its own part (the rule in the module
    docstring), or None when that is not proven. `region`: the gather's clean partial region."""
    dim = gather.in_placement.dim
    ops = [step for step in steps if step.name in region and step.name != gather.name]
    if any(dim not in COMPUTE_OPS[step.op].keeps_parts for step in ops):
        return None
    exits = [step for step in steps if step.name not in region and set(step.inputs) & region]
    if any(step.kind != "route" or step.out_placement.dim != dim for step in exits):
        return None
    kinds = list(dict.fromkeys(step.op for step in ops))
    through = f"{' and '.join(kinds)} {_verb(kinds)} the ranks' parts apart, then " if ops else ""
    return (
        f"each rank reads only its own part of the result along {dim_name(gather.in_placement)}: {through}"
        f"{' and '.join(step.name for step in exits)} {_verb(exits)} this rank's part. The gradient is zero outside "
        "that part on every rank, so the backward keeps it (a local slice) instead of a ReduceScatter of zeros"
    )


def _verb(subjects: list) -> str:
    return "keeps" if len(subjects) == 1 else "keep"


def _takes_copy(step: Step) -> bool:
    """Ops whose input gradient is partial although the input is replicated (`OpSpec.enters_tp`),
    and block ops that give a partial sum from a replicated operand (unpermute: the router's
    weights times the experts' partial results), whose gradient is partial too. The model's ends
    have such ops as well (the loss), but their replicated operands take no gradient."""
    if step.kind != "compute":
        return False
    return step.style in COMPUTE_OPS[step.op].enters_tp or (step.op in OPS and step.out_placement.local == P)


def _enters_tp(step: Step) -> bool:
    """Consumers whose output differs per tensor-parallel rank: their input gradient is partial."""
    return step.kind == "route" or _takes_copy(step)


def _passes_partial(step: Step) -> bool:
    """Replicated ops without parameters: a partial output gradient gives partial input gradients,
    and no parameter gradient is left partial."""
    return step.kind == "compute" and not step.params and step.out_placement == R
