"""Diagnostics: collected, never raised one at a time, and printed by one formatter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from par.dsl.escape import terminal
from par.dsl.frontend.source import SourceFile, Span

if TYPE_CHECKING:  # the DAG's types import networkx, which every command would then pay for
    from par.dsl.dag.types import Severity


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """An error, warning or note, with the source span it is about and a hint."""

    message: str
    span: Span | None = None
    severity: Severity = "error"
    hint: str | None = None
    notes: tuple[Diagnostic, ...] = ()  # further places that explain this one, printed after it

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0, self.message)
        return (self.span.file, self.span.line, self.span.col, self.message)


def error(message: str, span: Span | None, *, hint: str | None = None) -> Diagnostic:
    return Diagnostic(message, span, "error", hint)


def warning(message: str, span: Span | None, *, hint: str | None = None) -> Diagnostic:
    return Diagnostic(message, span, "warning", hint)


def note(message: str, span: Span | None) -> Diagnostic:
    return Diagnostic(message, span, "note")


class CompileError(Exception):
    """Raised by a stage that cannot go on; carries every diagnostic collected so far."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__("\n".join(d.message for d in self.diagnostics))


def format_diagnostic(diag: Diagnostic, sources: Mapping[str, SourceFile]) -> str:
    """`file:line:col: severity: message`, then the source line and a caret under the span."""
    if diag.span is None:
        lines = [f"par: {diag.severity}: {diag.message}"]
    else:
        span = diag.span
        lines = [f"{span}: {diag.severity}: {diag.message}"]
        source = sources.get(span.file)
        text = source.line(span.line) if source else None
        if text is not None:
            shown, caret = _window(text, span)
            lines.append("    " + shown)
            lines.append("    " + caret)
    if diag.hint:
        lines.append(f"    help: {diag.hint}")
    text = "\n".join(terminal(line) for line in lines)  # spec text may hold escape sequences
    return "\n".join([text, *(format_diagnostic(n, sources) for n in diag.notes)])


_WIDTH = 100


def _window(text: str, span: Span) -> tuple[str, str]:
    """The source line and its caret, cut to a window around the span when the line is long."""
    caret = _caret(text, span)
    if len(text) <= _WIDTH:
        return text, caret
    start = max(span.col - 1 - _WIDTH // 3, 0)
    end = start + _WIDTH
    prefix = "..." if start > 0 else ""
    suffix = "..." if end < len(text) else ""
    shown = prefix + text[start:end] + suffix
    marks = caret[start:end].rstrip()
    return shown, " " * len(prefix) + marks


def _caret(text: str, span: Span) -> str:
    start = max(span.col - 1, 0)
    if span.end_line == span.line and span.end_col > span.col:
        width = min(span.end_col, len(text) + 1) - span.col
    else:
        width = 1
    # Keep tabs so the caret lines up under tab-indented text.
    lead = "".join("\t" if ch == "\t" else " " for ch in text[:start])
    return lead + "^" + "~" * max(width - 1, 0)


def format_all(diagnostics: Iterable[Diagnostic], sources: Mapping[str, SourceFile]) -> str:
    ordered = sorted(diagnostics, key=Diagnostic.sort_key)
    return "\n".join(format_diagnostic(d, sources) for d in ordered)
