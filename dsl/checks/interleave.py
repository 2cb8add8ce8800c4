"""The interleaved 1F1B schedule's settings (docs/language.md, Interleaved pipeline): `chunks`,
the model chunks (Megatron's virtual pipeline stages) each pipeline stage holds, and its rules."""

from __future__ import annotations

from par.dsl.checks import stages as stage_split
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span

INTERLEAVED = "interleaved"


def chunk_rules(
    *, schedule: str, chunks: int, chunks_written: bool, pp: int, microbatches: int, spans: dict[str, Span]
) -> list[Diagnostic]:
    """What `schedule interleaved` and `chunks` need of the mesh; every problem at once."""
    found: list[Diagnostic] = []
    if schedule != INTERLEAVED:
        if chunks > 1:
            found.append(
                error(
                    f"chunks {chunks} needs schedule interleaved: {schedule} runs one contiguous chunk of layers per stage",
                    spans.get("chunks"),
                    hint="add `schedule interleaved`, or remove chunks",
                )
            )
        return found
    at = spans.get("schedule")
    if not chunks_written or chunks < 2:
        shown = f"chunks is {chunks}" if chunks_written else "chunks is not set"
        found.append(
            error(
                f"schedule interleaved needs 2 or more model chunks per stage, and {shown}",
                spans.get("chunks") if chunks_written else at,
                hint="add chunks 2 (Megatron's virtual pipeline size), or use schedule 1f1b",
            )
        )
    if pp < 2:
        found.append(error(f"schedule interleaved needs pp 2 or more, not {pp}: there is no pipeline to interleave", at, hint="set pp 2 or more, or remove the schedule"))
    elif microbatches % pp:
        fewer, more = microbatches // pp * pp, -(-microbatches // pp) * pp
        options = f"{fewer} or {more}" if fewer else f"{more}"
        found.append(
            error(
                f"microbatches ({microbatches}) is not a multiple of pp ({pp}): the interleaved schedule runs microbatches in groups of pp (Megatron's rule)",
                spans.get("microbatches"),
                hint=f"use microbatches {options}",
            )
        )
    return found


def even_chunks(layers: int, parts: int, spans: dict[str, Span]) -> tuple[tuple[tuple[int, int], ...] | None, list[Diagnostic]]:
    """The model chunks of an interleaved mesh without `stages`: `parts` = pp × chunks equal
    contiguous ranges of layers, in model order."""
    if layers % parts:
        options = sorted({parts * k for k in (layers // parts, layers // parts + 1) if k})
        return None, [
            error(
                f"layers ({layers}) is not divisible by pp × chunks ({parts}): every model chunk holds as many layers",
                spans.get("layers"),
                hint=f"use layers {' or '.join(map(str, options))}, or give stages a range per chunk",
            )
        ]
    return stage_split.even_split(layers, parts), []
