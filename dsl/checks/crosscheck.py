"""Checks that relate several settings: divisibility, world size, batch split.

Each message prints every factor and suggests a fix.
"""

from __future__ import annotations

from par.dsl.diagnostics import Diagnostic, error, warning
from par.dsl.frontend.source import Span


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _choices(options: list[int], near: int, limit: int = 8) -> str:
    """Up to `limit` options nearest `near`, in order, joined as 'a, b or c'."""
    picked = sorted(sorted(options, key=lambda d: (abs(d - near), d))[:limit])
    words = [str(d) for d in picked]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def cross_checks(
    values: dict[str, int], *, sequence_parallel: bool, spans: dict[str, Span], rules: tuple | None = None
) -> list[Diagnostic]:
    """Every check (of `rules`, the dense model's by default) whose settings all evaluated; the
    others were reported already."""
    found: list[Diagnostic] = []
    values = {**values, "sequence_parallel": sequence_parallel}
    for rule in _RULES if rules is None else rules:
        names = rule.__code__.co_varnames[: rule.__code__.co_argcount]
        if all(name in values for name in names):
            diagnostic = rule(*(values[name] for name in names))
            if diagnostic is not None:
                message, where, hint, severity = diagnostic
                make = warning if severity == "warning" else error
                found.append(make(message, spans.get(where), hint=hint))
    return found


# Each rule takes settings by name and returns (message, where, hint, severity) or None.


def _head_dims(hidden, heads):
    if hidden % heads:
        return (
            f"hidden ({hidden}) is not divisible by heads ({heads}): a head needs a whole number of dims",
            "heads",
            f"use heads {_choices(divisors(hidden), heads)}",
            "error",
        )


def _kv_groups(heads, kv_heads):
    if kv_heads > heads or heads % kv_heads:
        return (
            f"heads ({heads}) is not a multiple of kv_heads ({kv_heads}): "
            "each KV head must serve the same number of query heads",
            "kv_heads",
            f"use kv_heads {_choices(divisors(heads), kv_heads)}",
            "error",
        )


def _heads_tp(heads, tp):
    if heads % tp:
        return (f"heads ({heads}) is not divisible by tp ({tp})", "tp", f"use tp {_choices(divisors(heads), tp)}", "error")


def _kv_heads_tp(heads, kv_heads, tp):
    if kv_heads % tp and heads % tp == 0:  # otherwise the heads rule already names tp
        return (
            f"kv_heads ({kv_heads}) is not divisible by tp ({tp}): each tensor-parallel rank needs whole KV heads "
            "(par does not replicate KV heads across ranks)",
            "tp",
            f"use tp {_choices(divisors(kv_heads), tp)}, or raise kv_heads to a multiple of {tp}",
            "error",
        )


def _ffn_tp(ffn, tp):
    if ffn % tp:
        return (
            f"ffn ({ffn}) is not divisible by tp ({tp})",
            "ffn",
            f"use tp {_choices(divisors(ffn), tp)}, or an ffn that is a multiple of {tp}",
            "error",
        )


def _seq_cp(seq, cp):
    if cp > 1 and seq % (2 * cp):
        fits = [d for d in divisors(seq) if d > 1 and seq % (2 * d) == 0]
        return (
            f"seq ({seq}) is not divisible by 2 × cp (2 × {cp} = {2 * cp}): load-balanced causal attention "
            f"cuts the sequence into {2 * cp} chunks and gives context-parallel rank i chunks i and {2 * cp - 1} − i",
            "seq",
            f"use a seq that is a multiple of {2 * cp}" + (f", or cp {_choices(fits, cp)}" if fits else ""),
            "error",
        )


def _seq_sp(seq, tp, cp, sequence_parallel):
    if sequence_parallel and cp > 1 and seq % (2 * cp) == 0 and (seq // cp) % tp:
        return (
            f"each context-parallel rank's {seq // cp} tokens (seq {seq} / cp {cp}) are not divisible by tp ({tp}), "
            "which sequence parallelism needs",
            "seq",
            f"use a seq that is a multiple of cp × tp = {cp * tp}",
            "error",
        )
    if sequence_parallel and cp == 1 and seq % tp:
        return (
            f"seq ({seq}) is not divisible by tp ({tp}), which sequence parallelism needs",
            "seq",
            f"use a seq that is a multiple of {tp}, or tp {_choices(divisors(seq), tp)}",
            "error",
        )


def _batch_split(batch, dp, microbatches):
    per_step = dp * microbatches
    if batch % per_step:
        return (
            f"batch ({batch}) is not divisible by dp ({dp}) × microbatches ({microbatches}) = {per_step}: "
            "every microbatch of every replica must hold whole samples",
            "batch",
            f"use a batch that is a multiple of {per_step}"
            + (f", or microbatches {_choices(divisors(batch // dp), microbatches)}" if batch % dp == 0 else ""),
            "error",
        )


def _cp_ep(cp, ep):
    if cp > 1 and ep > 1:
        return (
            f"cp ({cp}) with ep ({ep}): par does not yet place expert-parallel groups inside a context-parallel mesh",
            "cp",
            "use cp 1 for a model with expert parallelism, or ep 1",
            "error",
        )


def _world(tp, pp, dp, cp, world):
    if cp > 1 and tp * cp * pp * dp != world:
        rest = world // (tp * cp * pp) if world % (tp * cp * pp) == 0 else None
        return (
            f"tp ({tp}) × cp ({cp}) × pp ({pp}) × dp ({dp}) = {tp * cp * pp * dp}, but world is {world}",
            "world",
            f"use dp {rest}" if rest else "make tp × cp × pp × dp equal world",
            "error",
        )
    if cp == 1 and tp * pp * dp != world:
        rest = world // (tp * pp) if world % (tp * pp) == 0 else None
        return (
            f"tp ({tp}) × pp ({pp}) × dp ({dp}) = {tp * pp * dp}, but world is {world}",
            "world",
            f"use dp {rest}" if rest else "make tp × pp × dp equal world",
            "error",
        )


def _bubble(pp, microbatches):
    if pp > 1 and microbatches < pp:
        return (
            f"microbatches ({microbatches}) is fewer than pp ({pp}): most of every step is pipeline bubble",
            "microbatches",
            f"use microbatches {pp} or more",
            "warning",
        )


_RULES = (_head_dims, _kv_groups, _heads_tp, _kv_heads_tp, _ffn_tp, _seq_cp, _seq_sp, _cp_ep, _batch_split, _world, _bubble)
