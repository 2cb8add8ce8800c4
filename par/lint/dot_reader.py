"""Read a DOT file into a `DotGraph`: nodes, edges and subgraphs as Graphviz means them.

Everything the file says is kept: a node declared inside a subgraph with no edges is still a
node (some readers drop those, and they are exactly what a linter must see), an edge to a node
that was never declared creates an *implicit* node, and every node and edge keeps the line and
column of the statement behind it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise

from par.dsl.frontend.source import TextDecodeError, byte_position, decode_text
from par.lint.dot_syntax import (
    Assign,
    AttrStmt,
    DotReadError,
    EdgeStmt,
    GraphSyntax,
    NodeRef,
    NodeStmt,
    Subgraph,
    parse_dot,
)

MAX_BYTES = 16 * 1024 * 1024  # about 20 s of parsing; real DAGs are well under 1 MiB


@dataclass(slots=True)
class DotSubgraph:
    """A subgraph or cluster of a DOT file and its attributes."""

    name: str | None
    attrs: dict[str, str]

    @property
    def label(self) -> str:
        return self.attrs.get("label", "")


@dataclass(slots=True)
class DotNode:
    """A node of a DOT file, with the attributes in effect where it is declared."""

    id: str
    attrs: dict[str, str]
    line: int
    col: int
    declared: bool  # False: only ever named in an edge
    scope: tuple[int, ...] = ()  # indices into DotGraph.subgraphs, outermost first
    html_label: bool = False
    bare: bool = False  # declared only by statements without an attribute list (`filled;`)


@dataclass(frozen=True, slots=True)
class DotEdge:
    """An edge of a DOT file, with its attributes."""

    src: str
    dst: str
    attrs: dict[str, str]
    line: int


@dataclass(slots=True)
class DotGraph:
    """A DOT graph read from a file: its nodes, edges and subgraphs."""

    file: str
    name: str
    directed: bool
    attrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, DotNode] = field(default_factory=dict)
    edges: list[DotEdge] = field(default_factory=list)
    subgraphs: list[DotSubgraph] = field(default_factory=list)
    line: int = 1

    def scope_of(self, node: DotNode) -> list[DotSubgraph]:
        return [self.subgraphs[index] for index in node.scope]


def read_dot_file(path: str) -> list[DotGraph]:
    return read_dot_text(_read_text(path), file=path)


def read_dot_text(text: str, *, file: str = "<text>") -> list[DotGraph]:
    if not text.strip():
        raise DotReadError("empty file; a DOT file starts with 'digraph {' or 'graph {'")
    try:
        syntaxes = parse_dot(text)
        return [_Builder(syntax, file).build() for syntax in syntaxes]
    except RecursionError:
        raise DotReadError("subgraphs are nested too deeply to read") from None


def _read_text(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise DotReadError(f"file is too large to lint ({size} bytes; the limit is "
                               f"{MAX_BYTES})")
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DotReadError(f"cannot read file: {exc.strerror or exc}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        line, col = byte_position(data, nul)
        raise DotReadError(f"binary data (a NUL byte at line {line}, column {col}); "
                           "this is not a DOT text file", line, col)
    try:
        return decode_text(data)
    except TextDecodeError as exc:
        raise DotReadError(exc.message, exc.line, exc.col) from None


@dataclass(slots=True)
class _Scope:
    """The defaults and attributes in effect in one subgraph while the file is read."""

    node_defaults: dict[str, str]
    edge_defaults: dict[str, str]
    graph_attrs: dict[str, str]
    path: tuple[int, ...]


class _Builder:
    """Walks the syntax tree in order, with Graphviz's scoping of default attributes."""

    def __init__(self, syntax: GraphSyntax, file: str):
        self.syntax = syntax
        name = syntax.name.text if syntax.name else ""
        self.graph = DotGraph(file, name, syntax.directed, line=syntax.line)

    def build(self) -> DotGraph:
        root = _Scope({}, {}, self.graph.attrs, ())
        self._statements(self.syntax.stmts, root)
        return self.graph

    def _statements(self, stmts, scope: _Scope) -> list[str]:
        """Interprets statements; returns the node ids they mention, in first-mention order."""
        mentioned: dict[str, None] = {}
        for stmt in stmts:
            if isinstance(stmt, NodeStmt):
                mentioned[self._node_stmt(stmt, scope)] = None
            elif isinstance(stmt, EdgeStmt):
                mentioned.update(dict.fromkeys(self._edge_stmt(stmt, scope)))
            elif isinstance(stmt, AttrStmt):
                self._attr_stmt(stmt, scope)
            elif isinstance(stmt, Assign):
                scope.graph_attrs[stmt.attr.key] = stmt.attr.value.text
            else:
                mentioned.update(dict.fromkeys(self._subgraph(stmt, scope)))
        return list(mentioned)

    def _attr_stmt(self, stmt: AttrStmt, scope: _Scope) -> None:
        target = {"graph": scope.graph_attrs, "node": scope.node_defaults,
                  "edge": scope.edge_defaults}[stmt.target]
        target.update((attr.key, attr.value.text) for attr in stmt.attrs)

    def _subgraph(self, stmt: Subgraph, scope: _Scope) -> list[str]:
        index = len(self.graph.subgraphs)
        name = stmt.name.text if stmt.name else None
        self.graph.subgraphs.append(DotSubgraph(name, {}))
        inner = _Scope(dict(scope.node_defaults), dict(scope.edge_defaults),
                       self.graph.subgraphs[index].attrs, scope.path + (index,))
        return self._statements(stmt.stmts, inner)

    def _line_of(self, stmt: Subgraph) -> int:
        """The subgraph's line; for an anonymous `{ ... }`, that of the first node it names."""
        if stmt.line:
            return stmt.line
        for inner in stmt.stmts:
            ref = inner.ref if isinstance(inner, NodeStmt) else None
            if isinstance(inner, EdgeStmt) and isinstance(inner.operands[0], NodeRef):
                ref = inner.operands[0]
            if ref is not None:
                return ref.id.line
        return self.syntax.line

    def _mention(self, ref: NodeRef, scope: _Scope) -> DotNode:
        node = self.graph.nodes.get(ref.id.text)
        if node is None:
            node = DotNode(ref.id.text, dict(scope.node_defaults), ref.id.line, ref.id.col,
                           declared=False, scope=scope.path)
            self.graph.nodes[node.id] = node
        return node

    def _node_stmt(self, stmt: NodeStmt, scope: _Scope) -> str:
        node = self._mention(stmt.ref, scope)
        if not node.declared:
            node.declared, node.bare = True, True
            node.line, node.col, node.scope = stmt.ref.id.line, stmt.ref.id.col, scope.path
        node.bare = node.bare and not stmt.attrs
        for attr in stmt.attrs:
            node.attrs[attr.key] = attr.value.text
            if attr.key == "label":
                node.html_label = attr.value.html
        return node.id

    def _edge_stmt(self, stmt: EdgeStmt, scope: _Scope) -> list[str]:
        groups: list[tuple[list[str], int]] = []
        for operand in stmt.operands:
            if isinstance(operand, NodeRef):
                groups.append(([self._mention(operand, scope).id], operand.id.line))
            else:
                line = self._line_of(operand)
                groups.append((self._subgraph(operand, scope), line))
        self._check_edge_ops(stmt)
        attrs = dict(scope.edge_defaults)
        attrs.update((attr.key, attr.value.text) for attr in stmt.attrs)
        for (sources, line), (targets, _) in pairwise(groups):
            for src in sources:
                self.graph.edges.extend(DotEdge(src, dst, attrs, line) for dst in targets)
        return [node_id for ids, _ in groups for node_id in ids]

    def _check_edge_ops(self, stmt: EdgeStmt) -> None:
        wanted = "->" if self.graph.directed else "--"
        for op in stmt.ops:
            if op.value != wanted:
                kind = "digraph" if self.graph.directed else "graph"
                raise DotReadError(f"'{op.value}' in a {kind}; edges of a {kind} use '{wanted}'",
                                   op.line or 1, op.column or 1)
