"""`par fmt`: print a Spec back as canonical .par text, keeping comments and the author's grouping.

Canonical means: two-space indentation, `name value` settings (no `=`), two spaces between
settings that share a line, aligned `=` in blocks, minimal parentheses, one blank line where
the source had one or more. Settings that shared a source line share an output line.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from par.dsl.frontend import spec as ast
from par.dsl.frontend.source import Span, split_lines
from par.dsl.units import exact

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ONE_LINE_WIDTH = 100


@dataclass(frozen=True, slots=True)
class _Line:
    """A line of the formatted spec, with the source line it comes from."""

    text: str
    source_line: int  # the line of the spec it comes from, for placing comments
    indent: int = 0


def format_spec(spec: ast.Spec, comments: list[ast.Comment], text: str) -> str:
    lines: list[_Line] = []
    for item in _items(spec):
        lines += _render_item(item)
    return _weave(lines, comments, split_lines(text))


def _items(spec: ast.Spec) -> list:
    items = [*spec.models, *spec.meshes, *spec.blocks, *spec.places, *spec.hardware, *spec.serves]
    items += [("strict", span) for span in spec.strict]
    return sorted(items, key=lambda item: (_span_of(item).line, _span_of(item).col))


def _span_of(item) -> Span:
    return item[1] if isinstance(item, tuple) else item.span


def _render_item(item) -> list[_Line]:
    if isinstance(item, tuple):
        return [_Line("strict", item[1].line)]
    if isinstance(item, ast.ModelDecl):
        head = f"model {item.name}" + (f" : {item.block}" if item.block else "")
        if item.layer_uses:
            uses = ", ".join(f"{use.block} {expression(use.first)}..{expression(use.last)}" for use in item.layer_uses)
            head = f"model {item.name} : {uses}"
        return _braced(head, [(s.span, _setting(s)) for s in item.settings], item.span)
    if isinstance(item, ast.MeshDecl):
        return _braced("mesh", _mesh_parts(item), item.span)
    if isinstance(item, ast.HardwareDecl):
        head = "hardware" + (f" {item.profile}" if item.profile else "")
        if not item.settings and item.profile:
            return [_Line(head, item.span.line)]
        return _braced(head, [(s.span, _setting(s)) for s in item.settings], item.span)
    if isinstance(item, ast.ServeDecl):
        return _braced("serve", [(s.span, _setting(s)) for s in item.settings], item.span)
    if isinstance(item, ast.Place):
        targets = ", ".join(t.after + (f" as {t.alias}" if t.alias else "") for t in item.targets)
        return [_Line(f"place {item.kind} after {targets}", item.span.line)]
    return _block(item)


def _setting(setting: ast.Setting) -> str:
    return f"{setting.name} {expression(setting.value)}"


def _mesh_parts(mesh: ast.MeshDecl) -> list[tuple[Span, str]]:
    parts = [(s.span, _setting(s)) for s in mesh.settings]
    if mesh.stages is not None and mesh.stages_span is not None:
        entries = ", ".join(_stage(stage) for stage in mesh.stages)
        parts.append((mesh.stages_span, f"stages [{entries}]"))
    if mesh.schedule is not None and mesh.schedule_span is not None:
        parts.append((mesh.schedule_span, f"schedule {mesh.schedule}"))
    if mesh.sequence_parallel and mesh.sp_span is not None:
        parts.append((mesh.sp_span, "sp"))
    return sorted(parts, key=lambda part: (part[0].line, part[0].col))


def _stage(stage: ast.StageSpec) -> str:
    if stage.last is None:
        return expression(stage.first)
    return f"{expression(stage.first)}..{expression(stage.last)}"


def _braced(head: str, parts: list[tuple[Span, str]], span: Span) -> list[_Line]:
    """`head { a  b }` on one line when the source had it so and it fits; else one line per
    source line of settings."""
    if not parts:
        return [_Line(head + " {}", span.line)]
    one_line = f"{head} {{ {'  '.join(text for _, text in parts)} }}"
    if span.line == span.end_line and len(one_line) <= _ONE_LINE_WIDTH:
        return [_Line(one_line, span.line)]
    lines = [_Line(head + " {", span.line)]
    groups: dict[int, list[str]] = {}
    for part_span, text in parts:
        groups.setdefault(part_span.line, []).append(text)
    lines += [_Line("  ".join(texts), line, 1) for line, texts in groups.items()]
    lines.append(_Line("}", span.end_line))
    return lines


def _block(block: ast.BlockDef) -> list[_Line]:
    width = max((len(s.target) for s in block.statements), default=0)
    lines = [_Line(f"block {block.name}({block.param}) {{", block.span.line)]
    for statement in block.statements:
        args = ", ".join(expression(arg) for arg in statement.args)
        lines.append(_Line(f"{statement.target.ljust(width)} = {statement.op}({args})", statement.span.line, 1))
    lines.append(_Line(f"return {block.result}", block.result_span.line, 1))
    lines.append(_Line("}", block.span.end_line))
    return lines


def expression(expr: ast.Expr, parent: int = 0, right: bool = False) -> str:
    """Canonical text of an expression, parenthesised only where precedence needs it."""
    if isinstance(expr, ast.Num):
        return _number(expr.value)
    if isinstance(expr, ast.Ref):
        return expr.name
    if isinstance(expr, ast.Neg):
        return "-" + expression(expr.operand, 3)
    own = _PRECEDENCE[expr.op]
    text = f"{expression(expr.left, own)} {expr.op} {expression(expr.right, own, right=True)}"
    needs = own < parent or (right and own == parent)
    return f"({text})" if needs else text


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "1e999"
    return exact(value)


def _weave(lines: list[_Line], comments: list[ast.Comment], source: list[str]) -> str:
    """Places each comment: at the end of the output line of the code it trailed, or on its own
    line before the code that followed it. Keeps one blank line where the source had any."""
    last_index = {line.source_line: index for index, line in enumerate(lines)}
    trailing = {
        last_index[c.span.line]: c for c in comments if c.span.line in last_index and _code_before(source, c.span)
    }
    placed = {id(c) for c in trailing.values()}
    pending = deque(sorted((c for c in comments if id(c) not in placed), key=lambda c: c.span.line))
    out: list[str] = []
    previous = 0
    for index, line in enumerate(lines):
        # A comment just before a closing brace belongs to the body it closes.
        indent = line.indent + 1 if line.text == "}" else line.indent
        while pending and pending[0].span.line < line.source_line:
            comment = pending.popleft()
            previous = _emit(out, source, previous, comment.span.line, "  " * indent + comment.text)
        text = "  " * line.indent + line.text
        if index in trailing:
            text += "  " + trailing[index].text
        previous = _emit(out, source, previous, line.source_line, text)
    for comment in pending:
        previous = _emit(out, source, previous, comment.span.line, comment.text)
    return "\n".join(out) + "\n"


def _emit(out: list[str], source: list[str], previous: int, line: int, text: str) -> int:
    if out and previous and any(not source[n - 1].strip() for n in range(previous + 1, line) if n - 1 < len(source)):
        out.append("")
    out.append(text)
    return max(previous, line)


def _code_before(source: list[str], span: Span) -> bool:
    line = source[span.line - 1] if span.line - 1 < len(source) else ""
    return bool(line[: span.col - 1].strip())
