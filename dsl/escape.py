"""User-controlled text (spec paths and names, comments, DOT ids and labels) made inert where it is written.

One function per target: the terminal, a Python comment, an HTML comment, Markdown text and a
Markdown code span. DOT strings and labels are escaped by `par.codegen.dot.text` (`quoted`, `html`).
Every target first gets `one_line`: each character that could move the cursor, start an escape
sequence, end a line or reorder text is shown as one visible character in its place, so a caret
under a quoted source line stays aligned.
"""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\ufffd"
# Bidirectional embeddings, overrides and isolates: they reorder what a reader sees.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_HIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _shown(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # Unicode's control pictures: ␛ for ESC, ␤ for a newline
    if code == 0x7F:
        return "\u2421"
    return REPLACEMENT


def one_line(text: str) -> str:
    """`text` without controls (tab kept), surrogates, noncharacters, line or paragraph separators
    and bidi controls: also fit for XML."""
    return "".join(_shown(char) if char != "\t" and _hidden(char) else char for char in text)


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN or char in _BIDI or (ord(char) & 0xFFFE) == 0xFFFE


def terminal(text: str) -> str:
    """Text for a terminal: no escape sequence (ANSI, OSC) reaches it, and nothing starts a new line."""
    return one_line(text)


def python_comment(text: str) -> str:
    """Text for the rest of a `#` comment line: nothing in it ends the line."""
    return one_line(text)


def html_comment(text: str) -> str:
    """Text between `<!-- ` and ` -->`: no `--`, so nothing in it ends the comment (`-->`, `--!>`)."""
    return one_line(text).replace("--", "-\u2010")


_MARKDOWN_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MARKDOWN_SPECIAL = re.compile(r"[&<>\\`*\[\]~!#]|_(?![^\W_])|(?<![^\W_])_")


def markdown(text: str) -> str:
    """Inline Markdown that reads as `text`: no HTML, link, emphasis or code. In a table cell,
    `markdown_cell` also escapes `|`.

    An underscore between two letters or digits cannot start or end emphasis and stays as it is,
    so `gpt_tp2_pp2` reads the same in the Markdown source.
    """
    def escape(match: re.Match) -> str:
        char = match.group(0)
        return _MARKDOWN_ENTITIES.get(char, "\\" + char)

    return _MARKDOWN_SPECIAL.sub(escape, one_line(text))


def markdown_code(text: str) -> str:
    """A Markdown code span showing `text`, whatever backticks it holds."""
    text = one_line(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", re.DOTALL)


def markdown_mixed(text: str) -> str:
    """Text that holds code spans (`markdown_code`, or backticks written by the message): the
    spans kept, as CommonMark reads them, and the text between them escaped with `markdown`."""
    parts, end = [], 0
    for match in _CODE_SPAN.finditer(text):
        parts.append(markdown(text[end:match.start()]))
        parts.append(one_line(match.group(0)))
        end = match.end()
    parts.append(markdown(text[end:]))
    return "".join(parts)


def markdown_cell(text: str) -> str:
    """`markdown_mixed` for a table cell: every `|`, also inside code, escaped as GitHub tables need."""
    return markdown_mixed(text).replace("|", "\\|")
