"""What a block statement may call, by name: the ops, then the collectives a block writes."""

from __future__ import annotations

from par.dsl.lowering.placement import Signature
from par.dsl.registry.collectives import COLLECTIVES, block_form
from par.dsl.registry.moe import ACTIVATIONS, MOE_SYNTAX
from par.dsl.registry.ops import OPS, Signatures, Syntax

WRITTEN = tuple(name for name, spec in COLLECTIVES.items() if spec.written is not None)
# `moe` is a block form: the checks write it out in the ops of par.dsl.registry.moe.
FORMS: dict[str, tuple[Syntax, tuple[str, ...]]] = {"moe": (MOE_SYNTAX, ACTIVATIONS)}
STATEMENTS: dict[str, Syntax] = (
    {name: spec.syntax for name, spec in OPS.items()}
    | {name: syntax for name, (syntax, _) in FORMS.items()}
    | {name: block_form(name).syntax for name in WRITTEN}
)


def _signatures(op: str) -> Signatures:
    return OPS[op].signatures if op in OPS else block_form(op).signatures


def choices(op: str) -> tuple[str, ...]:
    """The values an op's style or dim argument may take: the variants of its signatures (a
    block form's: its own)."""
    if op in FORMS:
        return FORMS[op][1]
    return tuple(variant for variant in _signatures(op) if variant is not None)


def default_dim(op: str, sequence_parallel: bool) -> str | None:
    """The dim a written collective takes when the spec does not say one."""
    written = COLLECTIVES[op].written if op in COLLECTIVES else None
    if written is None or written.default_dim is None:
        return None
    return written.default_dim(sequence_parallel)


def signatures(
    op: str, style: str | None, dim: str | None, *, sequence_parallel: bool, experts: bool = False
) -> list[Signature]:
    """The signatures an op of the block may take, preferred first: those of its variant (its
    style or dim) that hold with or without sequence parallelism; those on routed tokens only
    in a model with experts."""
    variant = style if style is not None else dim
    excluded = "no_sp" if sequence_parallel else "sp"
    return [
        s for s in _signatures(op)[variant] if s.mode != excluded and (experts or not any(p.routed for p in s.inputs))
    ]
