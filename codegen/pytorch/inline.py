"""Inlining the runtime (`par.codegen.pytorch.runtime`) into model.py.

The runtime modules are read as text (package resources), never imported: they import torch.
Three steps turn a module into a section of model.py:

* Fold: every `if` whose test names only spec constants or build-time facts (`Spec.constants`)
  is decided now; the branch taken stays, dedented, the other goes. A test `FACT and rest`
  whose facts hold keeps `if rest:`.
* Split: the module's docstring and imports are dropped (model.py has its own); a comment
  block that opens the body is the section's header; each top-level statement, with the
  comments right above it, is a piece that defines names and refers to names.
* Prune: a piece stays only if model.py's own code (the layer, Reference, `main`'s caller)
  reaches it through the pieces' references, so no unused function is written.

Fold and split read the module's outline (below), its statements as plain lists, not its syntax
tree: a build folds every runtime module from the outlines shipped in runtime/outlines.json and
parses none of them (parsing and walking them cost about 0.1 s of every `par build`).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

RUNTIME = "par.codegen.pytorch.runtime"
# Names the runtime may test in an `if` that model.py does not define: decided at build time.
BUILD_TIME = frozenset(
    {
        "SEQUENCE_PARALLEL", "SCHEDULE", "BY_HEAD", "MIXED_PRECISION", "FP32_GRADIENTS", "LOSS_SCALING", "ROPE_SCALING",
        "HF_CHECKPOINT", "ENDS", "TIED", "LEARNED_POSITIONS", "PADDED", "MOE", "ROUTER", "ROUTER_NORM", "GENERATES", "ZERO",
        "BLOCKWISE",
        "CP_ATTENTION",
    }
)
INDENT = 4


@dataclass(frozen=True, slots=True)
class Piece:
    """One top-level statement of a runtime module, with the comments right above it."""

    defines: frozenset[str]
    refers: frozenset[str]
    text: str


@dataclass(frozen=True, slots=True)
class Section:
    """A runtime module, folded for one spec and split into pieces."""

    module: str
    header: str  # the comment block that opens the module's body, or ""
    pieces: tuple[Piece, ...]

    def text(self, kept: set[Piece]) -> str:
        """The section as model.py holds it: header and kept pieces; "" if none is kept."""
        parts = [piece.text for piece in self.pieces if piece in kept]
        if not parts:
            return ""
        return "\n\n\n".join(([self.header] if self.header else []) + parts)


@cache
def source(module: str) -> str:
    return resources.files(RUNTIME).joinpath(f"{module}.py").read_text(encoding="utf-8")


def section(module: str, constants: Mapping[str, object]) -> Section:
    return _section(module, tuple(sorted(constants.items())))


@cache
def _section(module: str, constants: tuple[tuple[str, object], ...]) -> Section:
    """`split(module, fold(source(module), constants))`, from the module's outline: the folded
    text is not parsed again, its statements are the outline's, numbered as the folded lines."""
    text = source(module)
    folding = _Folding(text.splitlines(), dict(constants))
    return _split(module, folding.run(module_outline(module, text)))


# -- Outline ----------------------------------------------------------------------------------------
#
# What folding and splitting read of a module's syntax tree, in plain lists: parsing the runtime
# costs about 50 ms, walking its trees as much again, every build. runtime/outlines.json holds
# the outline of every runtime module, built ahead of time (`python -m par.codegen.pytorch.inline`)
# and keyed by the SHA-256 of its text and the outline's format; a module whose text changed is
# outlined from its text as before, and tests/torch/test_inline.py fails until the file is rebuilt.
#
# A node is one statement (or `except` clause, or `case`): [kind, line, end line, first line
# with its decorators, the names it refers to outside its statements, the names it defines,
# its statements, and for an `if` its test]; the test is [its conjuncts, each (names, column,
# source), its column, its end line, how many of the statements are the body, the body's end line].

OUTLINES = "outlines.json"
OUTLINE_FORMAT = 1
STATEMENT, DOCSTRING, IMPORT, IF = range(4)  # kinds
KIND, LINE, END, START, NAMES, DEFINES, CHILDREN, TEST = range(8)

Node = list  # the fields above; lists, as JSON gives them back


def outline(text: str) -> list[Node]:
    """The outline of a module's top-level statements."""
    return [_node(statement, text) for statement in ast.parse(text).body]


def _node(node: ast.AST, text: str) -> Node:
    names: set[str] = set()
    children: list[Node] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
            children.append(_node(child, text))
        elif not isinstance(node, ast.If):  # an if's test is kept by conjunct
            names |= _names(child)
    kind, test = STATEMENT, None
    if isinstance(node, ast.If):
        kind = IF
        conjuncts = [[sorted(_names(part)), part.col_offset, ast.get_source_segment(text, part)] for part in _conjuncts(node.test)]
        test = [conjuncts, node.test.col_offset, node.test.end_lineno, len(node.body), node.body[-1].end_lineno]
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        kind = DOCSTRING
    elif isinstance(node, ast.Import | ast.ImportFrom):
        kind = IMPORT
    line = getattr(node, "lineno", 0)  # a `case` has no position; only its statements' are read
    decorators = [decorator.lineno for decorator in getattr(node, "decorator_list", [])]
    defines = sorted(_defines(node)) if isinstance(node, ast.stmt) else []
    return [kind, line, getattr(node, "end_lineno", None) or line, min([line, *decorators]), sorted(names), defines, children, test]


def module_outline(module: str, text: str) -> list[Node]:
    """The shipped outline of runtime module `module` when it was built from `text`, else `text`'s."""
    entry = _shipped().get(module)
    if entry is not None and entry["sha256"] == _digest(text):
        return entry["outline"]
    return outline(text)


@cache
def _shipped() -> dict[str, dict]:
    try:
        found = json.loads(resources.files(RUNTIME).joinpath(OUTLINES).read_bytes())
    except (OSError, ValueError):  # missing or unreadable: outline every module from its text
        return {}
    if not isinstance(found, dict) or found.get("format") != OUTLINE_FORMAT:
        return {}
    return found["modules"]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def outlines() -> bytes:
    """runtime/outlines.json as `python -m par.codegen.pytorch.inline` writes it: every runtime
    module's outline, byte for byte the same in every run."""
    modules = sorted(
        entry.name.removesuffix(".py")
        for entry in resources.files(RUNTIME).iterdir()
        if entry.name.endswith(".py") and entry.name != "__init__.py"
    )
    shipped = {module: {"sha256": _digest(source(module)), "outline": outline(source(module))} for module in modules}
    return (json.dumps({"format": OUTLINE_FORMAT, "modules": shipped}, separators=(",", ":")) + "\n").encode("utf-8")


# -- Fold -------------------------------------------------------------------------------------------


def fold(text: str, constants: Mapping[str, object]) -> str:
    """`text` with every `if` on `constants` decided.

    One parse: the decided `if`s are met outermost first, each decided on the original lines;
    the ones inside a branch that stays are decided in turn, that branch's dedent added to
    theirs, and those inside a branch that goes go with it."""
    folding = _Folding(text.splitlines(), constants)
    folded = folding.run(outline(text))
    return "\n".join(folded.lines) + "\n" if folding.decided else text


class _Folded:
    """A module folded: its lines, and its top-level statements with what each is once folded."""

    def __init__(
        self,
        lines: list[str],
        statements: list[Node],
        taken: dict[int, list[Node]],  # id of a decided `if` -> the statements of the branch taken
        kept_from: dict[int, int],  # id of an `if FACT and rest` whose facts hold -> the first conjunct kept
        number: list[int | None] | None,  # per line of the text, its index in `lines`; None: the same
    ) -> None:
        self.lines, self.statements, self.taken, self.kept_from, self.number = lines, statements, taken, kept_from, number

    def kept(self, nodes: list[Node]) -> Iterable[Node]:
        """`nodes` as the folded text has them: each decided `if` replaced by the branch taken."""
        for node in nodes:
            taken = self.taken.get(id(node))
            if taken is None:
                yield node
            else:
                yield from self.kept(taken)

    def line(self, number: int) -> int:
        """The folded line number of line `number` of the text, which stays."""
        if self.number is None:
            return number
        index = self.number[number - 1]
        assert index is not None
        return index + 1

    def end(self, node: Node) -> int:
        """The node's folded end line: its last statement's that stays."""
        if not node[CHILDREN]:
            return self.line(node[END])
        return max(self.end(child) for child in self.kept(node[CHILDREN]))

    def names(self, node: Node) -> set[str]:
        """The names the node refers to once folded (`_names` of it parsed from the folded text)."""
        names = set(node[NAMES])
        if node[KIND] == IF:
            for conjunct in node[TEST][0][self.kept_from.get(id(node), 0) :]:
                names.update(conjunct[0])
        for child in self.kept(node[CHILDREN]):
            names |= self.names(child)
        return names


class _Folding:
    """Per line of the original text: how far it is dedented, or None where it goes."""

    def __init__(self, lines: list[str], constants: Mapping[str, object]) -> None:
        self.lines, self.constants = lines, constants
        self.dedent: list[int | None] = [0] * len(lines)
        self.decided = False
        self.taken: dict[int, list[Node]] = {}
        self.kept_from: dict[int, int] = {}

    def run(self, statements: list[Node]) -> _Folded:
        self.visit(statements)
        if not self.decided:
            return _Folded(self.lines, statements, self.taken, self.kept_from, None)
        lines: list[str] = []
        number: list[int | None] = []
        for line, dedent in zip(self.lines, self.dedent, strict=True):
            number.append(None if dedent is None else len(lines))
            if dedent is not None:
                lines.append(line[dedent:] if line.strip() else "")
        return _Folded(lines, statements, self.taken, self.kept_from, number)

    def visit(self, nodes: list[Node]) -> None:
        for child in nodes:
            if child[KIND] == IF and self.is_decided(child):
                self.decide(child)
            else:
                self.visit(child[CHILDREN])

    def is_decided(self, node: Node) -> bool:
        """The test's first conjunct names only constants: the inliner decides it."""
        return self.constants.keys() >= set(node[TEST][0][0][0])

    def decide(self, node: Node) -> None:
        lines, constants = self.lines, self.constants
        self.decided = True
        kind, lineno, end, _, _, _, children, (conjuncts, column, test_end, body_count, body_end) = node
        # An `elif` on constants parses as an `if` nested in the `else` of a test that is not decided:
        # folding it alone would drop that `else` and leave its body unconditional.
        heading = lines[lineno - 1].lstrip()
        assert not heading.startswith("elif"), f"runtime: nest the test on constants under `else:` (line {lineno})"
        assert test_end == lineno, f"runtime: write the test of the `if` on line {lineno} on one line"
        count = next((i for i, (names, _, _) in enumerate(conjuncts) if not constants.keys() >= set(names)), len(conjuncts))
        holds = all(_value(code, constants) for _, _, code in conjuncts[:count])
        if holds and count < len(conjuncts):  # `if FACT and rest:` -> `if rest:`
            line = lines[lineno - 1]
            lines[lineno - 1] = line[:column] + line[conjuncts[count][1] :]
            self.kept_from[id(node)] = count
            self.visit(children)
            return
        body, orelse = children[:body_count], children[body_count:]
        if orelse:
            chained = lines[orelse[0][LINE] - 1].lstrip().startswith("elif")
            assert not chained, f"runtime: no `elif` after a test on constants (line {lineno})"
            otherwise = next(i for i in range(body_end, end) if lines[i].strip() == "else:")
            body_lines, orelse_lines = range(lineno, otherwise), range(otherwise + 1, end)
        else:
            body_lines, orelse_lines = range(lineno, end), range(0)
        taken, statements = (body_lines, body) if holds else (orelse_lines, orelse)
        self.taken[id(node)] = statements
        dedent = self.dedent
        for number in range(lineno - 1, end):
            current = dedent[number]
            dedent[number] = current + INDENT if number in taken and current is not None else None
        for statement in statements:
            if statement[KIND] == IF and self.is_decided(statement):
                self.decide(statement)
            else:
                self.visit(statement[CHILDREN])


def _names(node: ast.AST) -> set[str]:
    return {name.id for name in ast.walk(node) if isinstance(name, ast.Name)}


def _conjuncts(test: ast.expr) -> list[ast.expr]:
    return list(test.values) if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]


def _value(test: str, constants: Mapping[str, object]) -> bool:
    return bool(eval(test, {"__builtins__": {}}, dict(constants)))  # the runtime's own source


# -- Split ------------------------------------------------------------------------------------------


def split(module: str, text: str) -> Section:
    return _split(module, _Folded(text.splitlines(), outline(text), {}, {}, None))


def _split(module: str, folded: _Folded) -> Section:
    lines = folded.lines
    statements = list(folded.kept(folded.statements))
    if statements and statements[0][KIND] == DOCSTRING:
        statements.pop(0)  # the module's docstring
    preamble = 0
    while statements and statements[0][KIND] == IMPORT:
        preamble = folded.end(statements.pop(0))
    header, previous = "", preamble
    pieces: list[Piece] = []
    for statement in statements:
        start = folded.line(statement[START]) - 1
        while start > previous and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        if not pieces:
            header = "\n".join(lines[previous:start]).strip("\n")
            previous = start
        end = folded.end(statement)
        text = "\n".join(lines[previous:end]).strip("\n")
        pieces.append(Piece(frozenset(statement[DEFINES]), frozenset(folded.names(statement)), text))
        previous = end
    stray = BUILD_TIME & frozenset().union(*(piece.refers for piece in pieces))  # the pieces hold every statement
    assert not stray, f"runtime/{module}.py: {sorted(stray)} outside an `if` test"
    return Section(module, header, tuple(pieces))


def _defines(statement: ast.stmt) -> frozenset[str]:
    if isinstance(statement, ast.FunctionDef | ast.ClassDef):
        return frozenset({statement.name})
    if isinstance(statement, ast.Assign | ast.AnnAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        return frozenset(name for target in targets for name in _names(target))
    return frozenset()


# -- Prune ------------------------------------------------------------------------------------------


def reachable(sections: Iterable[Section], roots: Iterable[str]) -> set[Piece]:
    """The pieces that `roots` (names model.py's own code refers to) reach, directly or not."""
    defining: dict[str, Piece] = {}
    for found in sections:
        for piece in found.pieces:
            for name in piece.defines:
                assert name not in defining, f"runtime: {name} is defined twice among {found.module} and others"
                defining[name] = piece
    kept: set[Piece] = set()
    todo = [defining[name] for name in roots if name in defining]
    while todo:
        piece = todo.pop()
        if piece not in kept:
            kept.add(piece)
            todo.extend(defining[name] for name in piece.refers if name in defining)
    return kept


def own_references(text: str, runtime: Iterable[Section]) -> set[str]:
    """The names that model.py's statements other than the runtime's pieces refer to."""
    defined = {name for found in runtime for piece in found.pieces for name in piece.defines}
    names: set[str] = set()
    for statement in ast.parse(text).body:
        if not (_defines(statement) & defined):
            names |= _names(statement)
    return names


def main() -> None:
    """Rewrite runtime/outlines.json from the runtime modules beside it."""
    target = resources.files(RUNTIME).joinpath(OUTLINES)
    with resources.as_file(target) as path:
        path.write_bytes(outlines())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
