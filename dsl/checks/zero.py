"""The mesh's `zero` setting: which training state data parallelism shards (docs/language.md, ZeRO)."""

from __future__ import annotations

from collections.abc import Collection

from par.dsl.diagnostics import Diagnostic, warning
from par.dsl.frontend.source import Span

ZERO = "zero"
ZERO_HINT = "0: nothing sharded, 1: optimizer state and master weights, 2: also gradients, 3: also weights"


def zero_checks(values: dict[str, int], *, serving: bool, spans: dict[str, Span], defaulted: Collection[str]) -> list[Diagnostic]:
    """A ZeRO stage that cannot shard anything is said, not silently ignored: the deployment is
    the same as with zero 0, so it is a warning, not an error."""
    stage = values.get(ZERO, 0)
    if not stage or ZERO in defaulted:
        return []
    span = spans.get(ZERO)
    if serving:
        return [warning(f"zero {stage} has no effect in a serving spec: it shards training state", span, hint="remove it")]
    if "dp" in values and "cp" in values and values["dp"] * values["cp"] == 1:
        message = f"zero {stage} has no effect: dp is 1, so there is no data-parallel group to shard over"
        return [warning(message, span, hint="set dp 2 or more, or remove it")]
    return []
