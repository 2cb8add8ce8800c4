"""Which local slices copy their part: those kept for backward whose source nothing else keeps.

A plain local slice (`x.chunk(TP, dim=d)[tp_rank]`, no pair) is a view: when an op keeps it for
its backward (a linear keeps its input), it keeps the whole tensor it views alive, TP times the
part. Where nothing else keeps that tensor (its producer does not keep its output, no other op
keeps it as an operand, it is not the layer's input or result), the slice copies its part
(`Step.clone`), and the whole tensor is freed after the forward. Where something keeps the
source anyway (attention keeps its output), the view costs nothing and a copy would add the
part: the slice stays a view. The generated code and the cost model both read `Step.clone`.
"""

from __future__ import annotations

from dataclasses import replace

from par.dsl.lowering.program import Step
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import NOTHING, OPS, Saves


def _saves(step: Step) -> Saves:
    if step.kind == "compute":
        return OPS[step.op].saves
    return COLLECTIVES[step.op].saves if step.kind == "comm" else NOTHING


def _plain_slice(step: Step) -> bool:
    return step.kind == "route" and step.pair is None


def with_copies(steps: tuple[Step, ...], param: str, result: str) -> tuple[Step, ...]:
    """The steps with `clone` set on the plain slices that copy their part (module docstring)."""
    kept_by_others: set[str] = {param, result}  # the layer's input and output live on anyway
    kept_as_operand: set[str] = set()
    for step in steps:
        saves = _saves(step)
        if saves.output:
            kept_by_others.add(step.name)
        operands = {step.inputs[index] for index in saves.operands}
        kept_as_operand |= operands
        if not _plain_slice(step):
            kept_by_others |= operands
    return tuple(
        replace(step, clone=True)
        if _plain_slice(step) and step.name in kept_as_operand and step.inputs[0] not in kept_by_others
        else step
        for step in steps
    )
