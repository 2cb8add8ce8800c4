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
"""

from __future__ import annotations

import ast
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
    """Folding re-parses the module once per `if`: done once per module and set of constants."""
    return split(module, fold(source(module), dict(constants)))


# -- Fold -------------------------------------------------------------------------------------------


def fold(text: str, constants: Mapping[str, object]) -> str:
    """`text` with every `if` on `constants` decided.

    One parse: the decided `if`s are met outermost first, each decided on the original lines;
    the ones inside a branch that stays are decided in turn, that branch's dedent added to
    theirs, and those inside a branch that goes go with it."""
    lines = text.splitlines()
    folding = _Folding(lines, constants)
    folding.visit(ast.parse(text))
    if not folding.decided:
        return text
    kept = []
    for number, line in enumerate(lines):
        dedent = folding.dedent[number]
        if dedent is None:
            continue
        kept.append(line[dedent:] if line.strip() else "")
    return "\n".join(kept) + "\n"


class _Folding:
    """Per line of the original text: how far it is dedented, or None where it goes."""

    def __init__(self, lines: list[str], constants: Mapping[str, object]) -> None:
        self.lines, self.constants = lines, constants
        self.dedent: list[int | None] = [0] * len(lines)
        self.decided = False

    def visit(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _decided(child.test, self.constants):
                self.decide(child)
            elif isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                self.visit(child)

    def decide(self, node: ast.If) -> None:
        lines, constants = self.lines, self.constants
        self.decided = True
        # An `elif` on constants parses as an `if` nested in the `else` of a test that is not decided:
        # folding it alone would drop that `else` and leave its body unconditional.
        heading = lines[node.lineno - 1].lstrip()
        assert not heading.startswith("elif"), f"runtime: nest the test on constants under `else:` (line {node.lineno})"
        conjuncts = _conjuncts(node.test)
        count = next((i for i, test in enumerate(conjuncts) if not _names(test) <= constants.keys()), len(conjuncts))
        known = conjuncts[:count]
        holds = all(_value(test, constants) for test in known)
        assert node.test.end_lineno == node.lineno, f"runtime: write the test of the `if` on line {node.lineno} on one line"
        if holds and len(known) < len(conjuncts):  # `if FACT and rest:` -> `if rest:`
            line = lines[node.lineno - 1]
            rest = conjuncts[len(known)]
            lines[node.lineno - 1] = line[: node.test.col_offset] + line[rest.col_offset :]
            self.visit(node)
            return
        end = node.end_lineno or node.lineno
        if node.orelse:
            chained = lines[node.orelse[0].lineno - 1].lstrip().startswith("elif")
            assert not chained, f"runtime: no `elif` after a test on constants (line {node.lineno})"
            otherwise = next(i for i in range(node.body[-1].end_lineno or 0, end) if lines[i].strip() == "else:")
            body, orelse = range(node.lineno, otherwise), range(otherwise + 1, end)
        else:
            body, orelse = range(node.lineno, end), range(0)
        taken, statements = (body, node.body) if holds else (orelse, node.orelse)
        dedent = self.dedent
        for number in range(node.lineno - 1, end):
            current = dedent[number]
            dedent[number] = current + INDENT if number in taken and current is not None else None
        for statement in statements:
            if isinstance(statement, ast.If) and _decided(statement.test, constants):
                self.decide(statement)
            else:
                self.visit(statement)


def _names(node: ast.AST) -> set[str]:
    return {name.id for name in ast.walk(node) if isinstance(name, ast.Name)}


def _conjuncts(test: ast.expr) -> list[ast.expr]:
    return list(test.values) if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]


def _decided(test: ast.expr, constants: Mapping[str, object]) -> bool:
    """The test's first conjunct names only constants: the inliner decides it."""
    first = _conjuncts(test)[0]
    return _names(first) <= constants.keys()


def _value(test: ast.expr, constants: Mapping[str, object]) -> bool:
    code = compile(ast.Expression(test), "<runtime>", "eval")
    return bool(eval(code, {"__builtins__": {}}, dict(constants)))  # the runtime's own source


# -- Split ------------------------------------------------------------------------------------------


def split(module: str, text: str) -> Section:
    lines = text.splitlines()
    tree = ast.parse(text)
    statements = list(tree.body)
    if statements and isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements.pop(0)  # the module's docstring
    preamble = 0
    while statements and isinstance(statements[0], ast.Import | ast.ImportFrom):
        preamble = statements.pop(0).end_lineno or 0
    header, previous = "", preamble
    pieces: list[Piece] = []
    for statement in statements:
        decorators = [decorator.lineno for decorator in getattr(statement, "decorator_list", [])]
        start = min([statement.lineno, *decorators]) - 1
        while start > previous and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        if not pieces:
            header = "\n".join(lines[previous:start]).strip("\n")
            previous = start
        end = statement.end_lineno or statement.lineno
        text = "\n".join(lines[previous:end]).strip("\n")
        pieces.append(Piece(_defines(statement), frozenset(_names(statement)), text))
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
