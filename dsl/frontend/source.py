"""Source files and spans: every spec object and DAG node points back at the text behind it."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def stem(file: str) -> str:
    """A spec's name without folder and `.par`: the name of its output folder."""
    name = file.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".par") else name


def split_lines(text: str) -> list[str]:
    """The lines of a text as the parser numbers them: only `\n` ends a line (the `\r` of a
    `\r\n` is dropped). Unlike `str.splitlines`, a form feed, vertical tab, U+0085 or U+2028 in
    a comment is an ordinary character, so it cannot shift the lines quoted after it."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line; it does not start another
    return [line.removesuffix("\r") for line in lines]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """The text of one spec, kept so diagnostics can quote the offending line."""

    name: str
    text: str
    # Split on first use, once: quoting many diagnostics must not split the file each time.
    _lines: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def line(self, number: int) -> str | None:
        lines = self._lines
        if lines is None:
            lines = split_lines(self.text)
            object.__setattr__(self, "_lines", lines)
        if 1 <= number <= len(lines):
            return lines[number - 1]
        return None


class TextDecodeError(ValueError):
    """Bytes that are not UTF-8 text; `line` and `col` locate the first bad byte."""

    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line and column of a byte offset."""
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def decode_text(data: bytes) -> str:
    """UTF-8 text without a leading byte-order mark; raises TextDecodeError at the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = byte_position(data, exc.start)
        raise TextDecodeError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded", line, col) from None
    return text[1:] if text.startswith("\ufeff") else text
