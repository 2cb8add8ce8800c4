"""The mesh's `recompute` (docs/language.md, Activation recomputation): what it needs and where it does nothing."""

from __future__ import annotations

from collections.abc import Sequence

from par.dsl.checks.deployment import Block, Mesh
from par.dsl.diagnostics import Diagnostic, error, warning
from par.dsl.frontend.source import Span
from par.dsl.registry.ops import COMPUTE_OPS


def recompute_checks(mesh: Mesh, blocks: Sequence[Block], span: Span) -> list[Diagnostic]:
    """`span`: where `recompute` was written (the spec or -D)."""
    if mesh.recompute == "none":
        return []
    if mesh.cp > 1:
        # A ring step already runs its blocks again in backward; what recomputing a whole layer's
        # ring would keep and send is not modelled.
        return [
            error(
                f"recompute {mesh.recompute} with context parallelism (cp {mesh.cp}) is not supported: the ring's "
                "attention already recomputes its blocks in backward",
                span,
                hint="use recompute none with cp, or cp 1",
            )
        ]
    if mesh.recompute == "selective" and not any(
        op.op in COMPUTE_OPS and COMPUTE_OPS[op.op].selective for block in blocks for op in block.ops
    ):
        names = ", ".join(sorted({block.name for block in blocks}))
        return [
            warning(
                f"recompute selective has no effect: block {names} has no attention (selective recomputes the attention core)",
                span,
                hint="use recompute full to recompute whole layers, or remove it",
            )
        ]
    return []
