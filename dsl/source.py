"""Source files and spans: every spec object and DAG node points back at the text behind it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A region of a source file; lines and columns are 1-based, `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @classmethod
    def point(cls, file: str, line: int = 1, col: int = 1) -> Span:
        return cls(file, line, col, line, col + 1)

    @classmethod
    def parse(cls, text: object) -> Span | None:
        """The point a `file:line:col` string names (the `src` of a DAG node), or None."""
        if not isinstance(text, str):
            return None
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls.point(parts[0], int(parts[1]), int(parts[2]))


@dataclass(frozen=True, slots=True)
class SourceFile:
    """The text of one spec, kept so diagnostics can quote the offending line."""

    name: str
    text: str

    def line(self, number: int) -> str | None:
        lines = self.text.splitlines()
        if 1 <= number <= len(lines):
            return lines[number - 1]
        return None
