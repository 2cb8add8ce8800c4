"""What par refuses, so that absurd or hostile input fails fast with a located error instead of
running for minutes or out of memory (docs/language.md: Limits)."""

from __future__ import annotations

import re

from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span

# A real spec is a few kilobytes; lark needs about 2 s of CPU for 256 KiB of the worst text bench/hostile.py found.
MAX_SPEC_BYTES = 256 << 10
# How deep brackets nest, and how many levels of operators one expression holds.
MAX_NESTING = 100
# Ops of one block, placed collectives included: the placement search recurses once per op.
MAX_BLOCK_OPS = 256
# States the placement search may visit: each value kept live across later ops multiplies them
# (the built-in blocks need about 40).
MAX_SEARCH_STATES = 2_000
# Nodes of the expanded DAG; the 16,384-GPU Llama-3-405B deployment has about 1.6 million.
DEFAULT_MAX_NODES = 4_000_000
# Diagnostics printed per run; the rest are counted.
DEFAULT_MAX_DIAGNOSTICS = 50

_BRACKET_OR_COMMENT = re.compile(r"#[^\n]*|[()\[\]{}]")
_OPENING = "([{"


def too_large(name: str, size: int) -> Diagnostic:
    return error(
        f"the file is {size:,} bytes; par reads specs of at most {MAX_SPEC_BYTES:,} bytes ({MAX_SPEC_BYTES >> 10} KiB)",
        Span.point(name),
    )


def nesting_error(text: str, file: str, *, line_offset: int = 0, col_offset: int = 0) -> Diagnostic | None:
    """An error at the first bracket nested deeper than MAX_NESTING (comments skipped), or None.

    One pass over the text, before the parser sees it: the parser would take minutes on
    megabytes of nesting."""
    depth = 0
    for match in _BRACKET_OR_COMMENT.finditer(text):
        char = match.group()
        if char in _OPENING:
            depth += 1
            if depth > MAX_NESTING:
                line, col = _position(text, match.start())
                line, col = line + line_offset, col + col_offset
                return error(
                    f"brackets nest more than {MAX_NESTING} deep",
                    Span(file, line, col, line, col + 1),
                    hint=f"par accepts at most {MAX_NESTING} levels of (, [ and {{",
                )
        elif char in ")]}":
            depth = max(depth - 1, 0)
    return None


def _position(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of a character offset, counted as the parser counts them."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1
