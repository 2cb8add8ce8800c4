"""Text to Spec. The only module that knows lark; its types never leave here."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache
from importlib.resources import files

from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from par.dsl.diagnostics import CompileError, Diagnostic, error
from par.dsl.frontend import spec as ast
from par.dsl.frontend.lark_tables import OPTIONS, lark_parser
from par.dsl.frontend.source import Span
from par.dsl.limits import MAX_NESTING, nesting_error

# Readable names for the terminals lark reports in "expected ..." sets.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "ONE_F_ONE_B": "'1f1b'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "__ANON_0": "'..'",
    "$END": "end of file",
}


GRAMMAR = files("par.grammar") / "par.lark"


def build_parser(grammar: str, **options) -> Lark:
    """The parser for a grammar text, built from it; strict LALR, so a conflict fails right here."""
    return Lark(grammar, **OPTIONS["par.lark"], **options)


@cache
def _lark(keep_comments: bool = False) -> Lark:
    options = {"lexer_callbacks": {"COMMENT": _COMMENTS.append}} if keep_comments else {}
    return lark_parser("par.lark", **options)  # from the shipped tables while they match the grammar


# Filled by the comment-keeping lexer during one parse_with_comments call.
_COMMENTS: list[Token] = []


def _known(position: int | None) -> int:
    """Lark types positions as optional; the tokens of its lexer and its errors always have them."""
    assert position is not None
    return position


def _token_span(file: str, tok: Token) -> Span:
    return Span(file, _known(tok.line), _known(tok.column), _known(tok.end_line), _known(tok.end_column))


def _binop(op: str):
    """A method of `_ToSpec` that builds `left op right`."""

    @v_args(meta=True)
    def build(self: _ToSpec, meta, children):
        left, right = children
        return self._deeper(ast.BinOp(op, left, right, self._span(meta)), left, right)

    return build


class _ToSpec(Transformer_NonRecursive):
    """Maps each grammar rule to the dataclass of the same meaning."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file
        self.depths: dict[int, int] = {}  # levels of operators under each BinOp and Neg, by id

    def _deeper(self, expr, *operands):
        """`expr`, one level of operators deeper than its deepest operand, within MAX_NESTING:
        the formatter and the evaluator walk expressions recursively."""
        depth = 1 + max(self.depths.get(id(operand), 0) for operand in operands)
        if depth > MAX_NESTING:
            raise _Refused(expr.span, f"expression has more than {MAX_NESTING} levels of operators")
        self.depths[id(expr)] = depth
        return expr

    def _span(self, meta) -> Span:
        if getattr(meta, "empty", True):
            return Span.point(self.file)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return _token_span(self.file, tok)

    # expressions
    @v_args(meta=True)
    def number(self, meta, children):
        (tok,) = children
        return ast.Num(_number_value(tok, self.file), self._span(meta))

    @v_args(meta=True)
    def ref(self, meta, children):
        return ast.Ref(str(children[0]), self._span(meta))

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")

    @v_args(meta=True)
    def neg(self, meta, children):
        return self._deeper(ast.Neg(children[0], self._span(meta)), children[0])

    # settings and stages
    @v_args(meta=True)
    def setting(self, meta, children):
        name, value = children  # the optional "=" and "," are anonymous tokens, filtered out
        return ast.Setting(str(name), value, self._span(meta), self._tok(name))

    @v_args(meta=True)
    def stage_count(self, meta, children):
        return ast.StageSpec(children[0], None, self._span(meta))

    @v_args(meta=True)
    def stage_range(self, meta, children):
        return ast.StageSpec(children[0], children[1], self._span(meta))

    @v_args(meta=True)
    def stages(self, meta, children):
        return ("stages", tuple(children), self._span(meta))

    @v_args(meta=True)
    def schedule(self, meta, children):
        return ("schedule", str(children[0]), self._tok(children[0]))

    @v_args(meta=True)
    def sp(self, meta, children):
        return ("sp", True, self._span(meta))

    # top-level items
    @v_args(meta=True)
    def model(self, meta, children):
        name, block, first_range, *rest = children
        settings = tuple(c for c in rest if isinstance(c, ast.Setting))
        uses = tuple(c for c in rest if isinstance(c, ast.LayerUse))
        if first_range is not None:
            (first, last), span = first_range
            at = self._tok(block)
            whole = Span(self.file, at.line, at.col, span.end_line, span.end_col)
            head = ast.LayerUse(str(block), first, last, whole, at)
            uses = (head, *uses)
        return ast.ModelDecl(
            str(name),
            str(block) if block is not None else None,
            settings,
            self._span(meta),
            self._tok(block) if block is not None else None,
            uses,
        )

    @v_args(meta=True)
    def layer_range(self, meta, children):
        first, last = children
        return (first, last), self._span(meta)

    @v_args(meta=True)
    def layer_use(self, meta, children):
        block, ((first, last), _) = children
        return ast.LayerUse(str(block), first, last, self._span(meta), self._tok(block))

    @v_args(meta=True)
    def mesh(self, meta, children):
        settings = tuple(c for c in children if isinstance(c, ast.Setting))
        extras = {c[0]: c for c in children if isinstance(c, tuple)}
        stages, schedule, sp = extras.get("stages"), extras.get("schedule"), extras.get("sp")
        return ast.MeshDecl(
            settings=settings,
            stages=stages[1] if stages else None,
            stages_span=stages[2] if stages else None,
            schedule=schedule[1] if schedule else None,
            schedule_span=schedule[2] if schedule else None,
            sequence_parallel=sp is not None,
            sp_span=sp[2] if sp else None,
            span=self._span(meta),
        )

    @v_args(meta=True)
    def statement(self, meta, children):
        target, op, *args = children
        args = tuple(a for a in args if a is not None)  # `op()`: the empty argument list is None
        return ast.Statement(str(target), str(op), args, self._span(meta), self._tok(target), self._tok(op))

    @v_args(meta=True)
    def block(self, meta, children):
        name, param, *statements, result = children
        return ast.BlockDef(
            str(name),
            str(param),
            tuple(statements),
            str(result),
            self._span(meta),
            self._tok(name),
            self._tok(param),
            self._tok(result),
        )

    @v_args(meta=True)
    def target(self, meta, children):
        after, alias = children
        return ast.PlaceTarget(str(after), str(alias) if alias is not None else None, self._span(meta))

    @v_args(meta=True)
    def place(self, meta, children):
        kind, *targets = children
        return ast.Place(str(kind), tuple(targets), self._span(meta), self._tok(kind))

    @v_args(meta=True)
    def strict(self, meta, children):
        return self._span(meta)

    def hardware_body(self, children):
        return tuple(children)

    @v_args(meta=True)
    def hardware(self, meta, children):
        profile, body = children
        return ast.HardwareDecl(
            str(profile) if profile is not None else None,
            body or (),
            self._span(meta),
            self._tok(profile) if profile is not None else None,
        )

    @v_args(meta=True)
    def serve(self, meta, children):
        return ast.ServeDecl(tuple(children), self._span(meta))

    def start(self, children):
        def of(kind):
            return tuple(c for c in children if isinstance(c, kind))

        strict = tuple(c for c in children if isinstance(c, Span))
        return ast.Spec(
            self.file,
            of(ast.ModelDecl),
            of(ast.MeshDecl),
            of(ast.BlockDef),
            of(ast.Place),
            strict,
            of(ast.HardwareDecl),
            serves=of(ast.ServeDecl),
        )

    def override(self, children):
        return tuple(children)


class _BadNumber(Exception):
    def __init__(self, tok: Token, message: str):
        self.tok, self.message = tok, message


class _Refused(Exception):
    def __init__(self, span: Span, message: str):
        self.span, self.message = span, message


def _number_value(tok: Token, file: str) -> int | float:
    text = str(tok).replace("_", "")
    try:
        if any(ch in text for ch in ".eE"):
            return float(text)
        return int(text)
    except ValueError as exc:  # Python refuses integers of more than a few thousand digits
        raise _BadNumber(tok, f"number {str(tok)[:20]}... is too long") from exc


@dataclass(frozen=True, slots=True)
class Parsed:
    """A spec as far as it parses: every item that parsed, and one error per broken stretch."""

    spec: ast.Spec
    errors: tuple[Diagnostic, ...]


def parse_text(text: str, file: str) -> ast.Spec:
    """Parse one spec; raises CompileError with every syntax error on bad syntax."""
    parsed = parse_spec(text, file)
    if parsed.errors:
        raise CompileError(parsed.errors)
    return parsed.spec


def parse_spec(text: str, file: str) -> Parsed:
    """Parse one spec, going on after a syntax error at the next item, so that the errors of
    later items and the semantic errors of the items that did parse can be reported too.
    Never raises: bad input comes back as `errors`."""
    return _parse_recovering(text, file, keep_comments=False)


def parse_with_comments(text: str, file: str) -> tuple[ast.Spec, list[ast.Comment]]:
    """Parse one spec and return its comments too (for the formatter)."""
    _COMMENTS.clear()
    try:
        parsed = _parse_recovering(text, file, keep_comments=True)
        if parsed.errors:
            raise CompileError(parsed.errors)
        comments = [ast.Comment(str(tok), _token_span(file, tok)) for tok in _COMMENTS]
    finally:
        _COMMENTS.clear()
    return parsed.spec, comments


def parse_override(name: str, value: str, span: Span) -> ast.Override:
    """Parse the value of `-D name=value`; `span` locates the value on the command line."""
    try:
        stages = _parse(value, span.file, "override", line_offset=span.line - 1, col_offset=span.col - 1)
    except CompileError as exc:
        return ast.Override(name, value, (), span, exc.diagnostics[0])
    return ast.Override(name, value, stages, span)


def _parse(text: str, file: str, start: str, *, line_offset: int = 0, col_offset: int = 0):
    too_deep = nesting_error(text, file, line_offset=line_offset, col_offset=col_offset)
    if too_deep is not None:
        raise CompileError([too_deep])
    try:
        tree = _lark().parse(text, start=start)
    except UnexpectedInput as exc:
        line, col = _error_position(exc, text)
        line, col = line + line_offset, col + col_offset
        raise CompileError([_syntax_error(exc, text, Span(file, line, col, line, col + 1))]) from None
    _shift(tree, line_offset, col_offset)
    return _transform(tree, file)


def _transform(tree: Tree, file: str):
    try:
        return _ToSpec(file).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, _BadNumber):
            bad = exc.orig_exc
            raise CompileError([error(bad.message, _token_span(file, bad.tok))]) from None
        if isinstance(exc.orig_exc, _Refused):
            raise CompileError([error(exc.orig_exc.message, exc.orig_exc.span)]) from None
        raise
    except RecursionError:
        raise CompileError([error("expression is nested too deeply", Span.point(file))]) from None


# A line that starts an item: the keyword and what must follow it, so that a setting, statement
# or place target that happens to be named `mesh` or `model` is not taken for one.
_ITEM_START = re.compile(
    r"^[ \t]*(?:"
    r"model[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*(?::|\{)"
    r"|mesh[ \t]*\{"
    r"|block[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*\("
    r"|place[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]+[A-Za-z_]"
    r"|strict[ \t]*(?:#|\r?$)"
    r"|hardware(?:[ \t]+[A-Za-z_][A-Za-z0-9_]*)?[ \t]*(?:\{|#|\r?$)"
    r"|serve[ \t]*\{"
    r")",
    re.MULTILINE,
)
_ITEMS = frozenset({"model", "mesh", "block", "place", "strict", "hardware", "serve"})
_KEYWORD = re.compile(r"\b(" + "|".join(sorted(_ITEMS)) + r")\b")
MAX_SYNTAX_ERRORS = 100


def _parse_recovering(text: str, file: str, *, keep_comments: bool) -> Parsed:
    """Panic-mode recovery: on a syntax error, keep the items before it, drop the item it broke,
    and parse again from the next line that starts an item. Past MAX_SYNTAX_ERRORS errors the rest
    of the file is left unread, so a file of nothing but errors costs no more than a few parses."""
    too_deep = nesting_error(text, file)
    if too_deep is not None:  # checked before lark sees the text: deep nesting would cost it minutes
        return Parsed(replace(_transform(Tree("start", []), file), broken=(None,)), (too_deep,))
    items: list[Tree | Token] = []
    errors: list[Diagnostic] = []
    broken: set[str | None] = set()
    start, line_offset, reported = 0, 0, -1
    while True:
        segment = text[start:]
        try:
            tree = _lark(keep_comments).parse(segment, start="start")
        except UnexpectedInput as exc:
            line, col = _error_position(exc, segment)
            at = start + _error_offset(exc, segment)
            if at > reported:  # an error at or before one already reported follows from it
                span = Span(file, line + line_offset, col, line + line_offset, col + 1)
                errors.append(_syntax_error(exc, segment, span))
                reported = at
            done, first = _salvage(exc)
            _shift(Tree("start", done), line_offset, 0)
            items += done
            where = start + (_known(first.start_pos) if first is not None else _error_offset(exc, segment))
            newline = text.find("\n", where)
            following = _ITEM_START.search(text, newline + 1) if newline >= 0 else None
            # What the dropped text may have held: every item keyword in it, and anything at all
            # when it does not start with one (a misspelt keyword).
            dropped = text[where : following.start() if following else len(text)]
            broken.update(_KEYWORD.findall(dropped))
            if first is None:
                broken.add(None)
            if following is None:
                break
            line_offset += text.count("\n", start, following.start())
            start = following.start()
            if len(errors) >= MAX_SYNTAX_ERRORS:  # bounds the work on a file of nothing but errors
                errors.append(error(f"stopped reading after {MAX_SYNTAX_ERRORS} syntax errors", Span.point(file, line_offset + 1)))
                broken.add(None)
                break
            continue
        _shift(tree, line_offset, 0)
        items += tree.children
        break
    try:
        spec = _transform(Tree("start", items), file)
    except CompileError as exc:  # a number too long to read, or too deep an expression
        spec, broken = _transform(Tree("start", []), file), {None}
        errors += exc.diagnostics
    return Parsed(replace(spec, broken=tuple(sorted(broken, key=str))), tuple(sorted(errors, key=Diagnostic.sort_key)))


def _salvage(exc: UnexpectedInput) -> tuple[list[Tree], Token | None]:
    """The items complete before a syntax error, and the keyword of the item it broke (None
    when the error fell between items)."""
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is None:
        return [], None
    try:  # the error may fall right after a whole item the parser had not reduced yet
        return list(interactive.feed_eof().children), None
    except UnexpectedInput:
        pass
    done: list[Tree] = []
    for value in interactive.parser_state.value_stack:
        if isinstance(value, Tree) and value.data in _ITEMS:
            done.append(value)
        elif isinstance(value, Tree) and value.data.startswith("__start"):  # the items so far
            done += value.children
        else:
            return done, value if isinstance(value, Token) else None
    return done, None


def _error_offset(exc: UnexpectedInput, text: str) -> int:
    return len(text) if _at_end(exc) else _known(exc.pos_in_stream)


def _at_end(exc: UnexpectedInput) -> bool:
    return isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END")


def _error_position(exc: UnexpectedInput, text: str) -> tuple[int, int]:
    """Where to point: the offending token, or just past the last text at end of file."""
    if not _at_end(exc) and exc.line > 0:
        return exc.line, exc.column
    stripped = text.rstrip()
    return stripped.count("\n") + 1, len(stripped) - (stripped.rfind("\n") + 1) + 1


def _shift(tree, line_offset: int, col_offset: int) -> None:
    """Move a command-line value's positions to where it sits on the command line."""
    if not (line_offset or col_offset):
        return
    for sub in tree.iter_subtrees():  # iterative: a deeply nested expression is no RecursionError
        for tok in sub.children:
            if isinstance(tok, Token):
                tok.line = _known(tok.line) + line_offset
                tok.end_line = _known(tok.end_line) + line_offset
                tok.column = _known(tok.column) + col_offset
                tok.end_column = _known(tok.end_column) + col_offset
        if not sub.meta.empty:
            sub.meta.line += line_offset
            sub.meta.end_line += line_offset
            sub.meta.column += col_offset
            sub.meta.end_column += col_offset


def _syntax_error(exc: UnexpectedInput, text: str, span: Span) -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        at = _known(exc.pos_in_stream)
        char = text[at] if at < len(text) else ""
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}" if char else "end of input"
        hint = "names are ASCII letters, digits and _" if char and not char.isascii() else None
        return error(f"unexpected character {shown}", span, hint=hint)
    # `accepts` includes keywords the contextual lexer folds into NAME; `expected` does not.
    accepted = getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ()
    expected = sorted({_TERMINAL_NAMES.get(t, _keyword(t)) for t in accepted})
    if isinstance(exc, UnexpectedToken) and not _at_end(exc):
        found = repr(str(exc.token))
    else:
        found = "end of file"
    message = f"unexpected {found}"
    if expected:
        message += "; expected " + _one_of(expected)
    return error(message, span, hint=_missing_brace_hint(exc, text))


def _missing_brace_hint(exc: UnexpectedInput, text: str) -> str | None:
    """`model m { ...` left open runs into the next item, whose keyword then reads as a setting."""
    if not isinstance(exc, UnexpectedToken) or exc.token.type != "LBRACE":
        return None
    before = text[: exc.token.start_pos].split()
    if before and before[-1] in ("mesh", "hardware"):
        return f"is a '}}' missing before '{before[-1]}'?"
    return None


def _keyword(terminal: str) -> str:
    # Anonymous keyword terminals are named after their text in upper case ("MODEL" for "model").
    return f"'{terminal.lower()}'"


def _one_of(options: list[str]) -> str:
    if len(options) == 1:
        return options[0]
    if len(options) > 8:
        return ", ".join(options[:8]) + " or another token"
    return ", ".join(options[:-1]) + " or " + options[-1]
