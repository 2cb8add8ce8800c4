"""DOT text -> a syntax tree of plain dataclasses. Lark types stop in this module.

The tree keeps every statement in source order, each id with its line and column; giving it
meaning (default attributes, subgraph scopes, implicit nodes) is `dot_reader`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from lark import Lark, Token, Transformer
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from par.dsl.frontend.lark_tables import lark_parser
from par.dsl.frontend.source import byte_position


@dataclass(frozen=True, slots=True)
class Id:
    """A DOT id as written, with where it is."""

    text: str
    line: int
    col: int
    html: bool = False


@dataclass(frozen=True, slots=True)
class Attr:
    """`key=value`."""

    key: str
    value: Id


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node named in a statement, with its port."""

    id: Id
    port: str | None


@dataclass(frozen=True, slots=True)
class NodeStmt:
    """`id [attrs]`."""

    ref: NodeRef
    attrs: tuple[Attr, ...]


@dataclass(frozen=True, slots=True)
class EdgeStmt:
    """`a -> b -> ... [attrs]`: nodes or subgraphs joined by edge operators."""

    operands: tuple[NodeRef | Subgraph, ...]
    ops: tuple[Token, ...]
    attrs: tuple[Attr, ...]


@dataclass(frozen=True, slots=True)
class AttrStmt:
    """`graph|node|edge [attrs]`: defaults for what follows."""

    target: str  # graph | node | edge
    attrs: tuple[Attr, ...]


@dataclass(frozen=True, slots=True)
class Assign:
    """`key=value` as a statement: a graph attribute."""

    attr: Attr


@dataclass(frozen=True, slots=True)
class Subgraph:
    """`subgraph name { ... }`, or an anonymous `{ ... }`."""

    name: Id | None
    stmts: tuple[Stmt, ...]
    line: int  # 0 for an anonymous `{ ... }`: its statements carry their own positions


Stmt = NodeStmt | EdgeStmt | AttrStmt | Assign | Subgraph


@dataclass(frozen=True, slots=True)
class GraphSyntax:
    """A DOT graph as parsed, before its defaults and scopes are applied."""

    name: Id | None
    directed: bool
    stmts: tuple[Stmt, ...]
    line: int


class DotReadError(Exception):
    """A file or text that cannot be read as DOT, with the 1-based line and column to point at."""

    def __init__(self, message: str, line: int = 1, col: int = 1):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


def _unquote(token: Token) -> str:
    body = token.value[1:-1]
    if "\\" not in body:
        return body
    return body.replace("\\\r\n", "").replace("\\\n", "").replace('\\"', '"')


class _ToSyntax(Transformer):
    """Maps rule names to the dataclasses above; runs inline while LALR parses."""

    def id(self, children):
        first = children[0]
        if first.type == "QUOTED":
            text = "".join(_unquote(tok) for tok in children)
            return Id(text, first.line, first.column)
        if first.type == "HTML":
            return Id(first.value[1:-1], first.line, first.column, html=True)
        return Id(first.value, first.line, first.column)

    def attr(self, children):
        key, value = children
        return Attr(key.text, value if value is not None else Id("true", key.line, key.col))

    def attr_list(self, children):
        return tuple(child for child in children if isinstance(child, Attr))

    def assign(self, children):
        return Assign(Attr(children[0].text, children[1]))

    def attr_stmt(self, children):
        target, attrs = children
        return AttrStmt(target.value.lower(), attrs)

    def port(self, children):
        return ":".join(part.text for part in children if part is not None)

    def node_id(self, children):
        return NodeRef(children[0], children[1])

    def node_stmt(self, children):
        return NodeStmt(children[0], children[1] or ())

    def edge_stmt(self, children):
        operands = tuple(c for c in children[:-1] if not isinstance(c, Token))
        ops = tuple(c for c in children[:-1] if isinstance(c, Token))
        return EdgeStmt(operands, ops, children[-1] or ())

    def stmt_list(self, children):
        return tuple(children)

    def subgraph(self, children):
        keyword, name, stmts = children
        line = keyword.line if keyword is not None else name.line if name is not None else 0
        return Subgraph(name, stmts, line)

    def graph(self, children):
        _strict, kind, name, stmts = children
        return GraphSyntax(name, kind.value.lower() == "digraph", stmts, kind.line)

    def start(self, children):
        return tuple(children)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return lark_parser("dot.lark", transformer=_ToSyntax())  # from the shipped tables while they match the grammar


def parse_dot(text: str) -> tuple[GraphSyntax, ...]:
    """Parse DOT text; raises DotReadError with the line and column of the first problem."""
    try:
        return cast(tuple[GraphSyntax, ...], _parser().parse(text))  # what the transformer builds
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text) from None


_TERMINAL_WORDS = {
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "SEMICOLON": "';'",
    "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "PLUS": "'+'", "EDGEOP": "'->'",
    "ID": "a name", "NUMERAL": "a number", "QUOTED": "a quoted string", "HTML": "an <html> string",
    "STRICT": "'strict'", "KW_GRAPH": "'graph'", "KW_DIGRAPH": "'digraph'",
    "KW_SUBGRAPH": "'subgraph'", "KW_NODE": "'node'", "KW_EDGE": "'edge'", "$END": "end of file",
}


def _expected(names) -> str:
    words = sorted({_TERMINAL_WORDS.get(name, name) for name in names})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _syntax_error(exc: UnexpectedInput, text: str) -> DotReadError:
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(exc, text)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        shown = token.value if len(token.value) <= 40 else token.value[:37] + "..."
        where = " at the start of the file" if _only_space_before(text, token.start_pos) else ""
        message = f"unexpected {shown!r}{where}; expected {_expected(exc.expected)}"
        return DotReadError(message, token.line, token.column)
    line, col = _end_position(text)
    expected = exc.expected if isinstance(exc, (UnexpectedToken, UnexpectedEOF)) else ()
    return DotReadError(f"unexpected end of file; expected {_expected(expected)}", line, col)


def _bad_character(exc: UnexpectedCharacters, text: str) -> DotReadError:
    at = exc.pos_in_stream or 0  # lark's errors always have it; typed optional
    char = text[at] if at < len(text) else ""
    if char == '"':
        message = "unterminated quoted string (no closing '\"')"
    elif char == "<":
        message = "unterminated or unbalanced <html> string"
    else:
        message = f"unexpected character {char!r}; it is not valid in DOT outside a quoted string"
    return DotReadError(message, exc.line, exc.column)


def _only_space_before(text: str, pos: int | None) -> bool:
    return pos is not None and not text[:pos].strip()


def _end_position(text: str) -> tuple[int, int]:
    # One byte per character (Latin-1, anything else as '?'), so the column counts characters
    # as lark's positions do.
    return byte_position(text.encode("latin-1", "replace"), len(text))
