"""Resolve the model's block: names, ops, arguments and `place` statements, all errors collected."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from par.dsl.checks.deployment import Block, Op
from par.dsl.checks.evaluate import (
    AlreadyReported,
    EvalError,
    Namespace,
    did_you_mean,
    evaluate,
)
from par.dsl.checks.experts import write_out
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.spec import BlockDef, Expr, ModelDecl, Place, Ref, Statement
from par.dsl.registry.collectives import block_form
from par.dsl.registry.ops import Syntax
from par.dsl.registry.statements import STATEMENTS, WRITTEN, choices, default_dim


def resolve_block(
    *,
    model_decl: ModelDecl,
    spec_blocks: Sequence[BlockDef],
    library_blocks: Sequence[BlockDef],
    places: Sequence[Place],
    namespace: Namespace,
    sequence_parallel: bool,
    blocks_broken: bool = False,
    blame: Callable[[Diagnostic, Expr, str], None] | None = None,
) -> tuple[Block | None, list[Diagnostic]]:
    """`blocks_broken`: a block of the spec may be in text that did not parse, so a block the
    model cannot find is not reported (the syntax error is). `blame(diagnostic, size, block)`
    reports a size of a built-in block that the settings make fail: the user never wrote that
    line, so the caller points at the settings instead."""
    diags: list[Diagnostic] = []
    own: dict[str, BlockDef] = {}
    for block in spec_blocks:
        if block.name in own:
            diags.append(error(f"block '{block.name}' is defined twice (first at {own[block.name].span})", block.name_span))
        else:
            own[block.name] = block
    chosen = _choose(model_decl, own, {b.name: b for b in library_blocks}, [] if blocks_broken else diags)
    resolved: Block | None = None
    for block in own.values():
        result = _BlockResolver(block, namespace, sequence_parallel, diags).resolve()
        if block is chosen:
            resolved = result
    if chosen is not None and chosen.name not in own:
        resolved = _BlockResolver(chosen, namespace, sequence_parallel, diags, blame).resolve()
    if resolved is not None:
        resolved = write_out(resolved, namespace, diags)  # `moe` block forms, before places name their ops
    if resolved is not None:
        resolved = _apply_places(resolved, places, sequence_parallel, diags)
    else:
        diags.extend(d for place in places if (d := _kind_error(place)) is not None)
    return resolved, diags


def _kind_error(place: Place) -> Diagnostic | None:
    if place.kind not in WRITTEN:
        hint = did_you_mean(place.kind, WRITTEN) or f"collectives are: {', '.join(WRITTEN)}"
        return error(f"unknown collective '{place.kind}'", place.kind_span, hint=hint)
    if not block_form(place.kind).placeable:
        return error(f"{place.kind} needs a dim; write it inside the block: y = {place.kind}(x, seq)", place.kind_span)
    return None


def _choose(model_decl: ModelDecl, own: dict, library: dict, diags: list[Diagnostic]) -> BlockDef | None:
    if model_decl.block is not None:
        found = own.get(model_decl.block) or library.get(model_decl.block)
        if found is None:
            known = sorted(set(own) | set(library))
            hint = did_you_mean(model_decl.block, known) or f"known blocks: {', '.join(known)}"
            diags.append(error(f"unknown block '{model_decl.block}'", model_decl.block_span, hint=hint))
        return found
    if len(own) == 1:
        return next(iter(own.values()))
    hint = f"write `model {model_decl.name} : <block>` with one of: {', '.join(sorted(set(own) | set(library)))}"
    diags.append(error(f"model '{model_decl.name}' does not say which block it uses", model_decl.span, hint=hint))
    return None


class _BlockResolver:
    def __init__(
        self,
        block: BlockDef,
        namespace: Namespace,
        sequence_parallel: bool,
        diags: list[Diagnostic],
        blame: Callable[[Diagnostic, Expr, str], None] | None = None,
    ):
        self.block = block
        self.blame = blame
        self.namespace = namespace
        self.sequence_parallel = sequence_parallel
        self.diags = diags
        self.ok = True

    def err(self, message: str, span, hint: str | None = None) -> None:
        self.diags.append(error(message, span, hint=hint))
        self.ok = False

    def resolve(self) -> Block | None:
        block = self.block
        later: dict[str, Statement] = {}
        for statement in block.statements:
            later.setdefault(statement.target, statement)
        defined = {block.param: block.param_span}
        ops = []
        for statement in block.statements:
            op = self._statement(statement, defined, later)
            if statement.target in defined:
                first = defined[statement.target]
                self.err(f"'{statement.target}' is defined twice in block '{block.name}' (first at {first})", statement.target_span)
            defined[statement.target] = statement.target_span
            if op is not None:
                ops.append(op)
        if block.result not in defined:
            self.err(f"block '{block.name}' returns '{block.result}', which it never defines", block.result_span, did_you_mean(block.result, defined))
        self._unused()
        if not self.ok:
            return None
        return Block(block.name, block.param, tuple(ops), block.result, block.span)

    def _unused(self) -> None:
        # Judged on the text, so one bad statement does not make its inputs look unused.
        statements = self.block.statements
        used = {arg.name for s in statements for arg in s.args if isinstance(arg, Ref)} | {self.block.result}
        if self.block.param not in used:
            self.err(f"block '{self.block.name}' never uses its input '{self.block.param}'", self.block.param_span)
        for statement in self.block.statements:
            if statement.target not in used:
                self.err(
                    f"'{statement.target}' is computed but never used",
                    statement.target_span,
                    "use it, return it, or remove it: every op must feed the layer's output",
                )

    def _statement(self, statement: Statement, defined: dict, later: dict) -> Op | None:
        definition = STATEMENTS.get(statement.op)
        if definition is None:
            hint = did_you_mean(statement.op, STATEMENTS) or f"ops are: {', '.join(STATEMENTS)}"
            self.err(f"unknown op '{statement.op}'", statement.op_span, hint)
            return None
        args = statement.args
        bias = next((arg for arg in args[definition.tensors :] if isinstance(arg, Ref) and arg.name == "bias"), None)
        if bias is not None and "bias" not in definition.extras:
            which = [name for name, syntax in STATEMENTS.items() if "bias" in syntax.extras]
            usage = f"usage: {STATEMENTS[which[0]].usage}" if which else None
            self.err(f"{statement.op} takes no bias argument; only {' and '.join(which)} does", bias.span, usage)
            return None
        most = definition.tensors + len(definition.extras)
        least = most - definition.optional
        if not least <= len(args) <= most:
            count = str(most) if least == most else f"{least} to {most}"
            self.err(f"{statement.op} takes {count} arguments, not {len(args)}", statement.span, f"usage: {definition.usage}")
            return None
        inputs = [self._value(arg, defined, later, statement) for arg in args[: definition.tensors]]
        extras = self._extras(definition, args[definition.tensors :], statement)
        if any(i is None for i in inputs) or extras is None:
            return None
        return Op(
            name=statement.target,
            op=statement.op,
            inputs=tuple(i for i in inputs if i is not None),  # none is, as checked above
            span=statement.span,
            out_features=extras.get("size"),
            style=extras.get("style"),
            bias=extras.get("bias", False),
            dim=extras.get("dim") or default_dim(statement.op, self.sequence_parallel),
            label=statement.target if statement.op in WRITTEN else None,
        )

    def _value(self, arg: Expr, defined: dict, later: dict, statement: Statement) -> str | None:
        if not isinstance(arg, Ref):
            self.err(f"{statement.op} expects a value here, not a number", arg.span, f"usage: {STATEMENTS[statement.op].usage}")
            return None
        if arg.name in defined:
            return arg.name
        if arg.name in later:
            where = later[arg.name].target_span
            self.err(f"'{arg.name}' is used before it is defined (at {where})", arg.span, "move the definition above this line")
        else:
            self.err(f"undefined value '{arg.name}'", arg.span, did_you_mean(arg.name, defined))
        return None

    def _extras(self, definition: Syntax, args: Sequence[Expr], statement: Statement) -> dict | None:
        found, ok = {}, True
        for kind, arg in zip(definition.extras, args, strict=False):
            value: int | str | bool | None
            if kind == "size":
                value = self._size(arg)
            elif kind == "bias":
                value = True if isinstance(arg, Ref) and arg.name == "bias" else None
                if value is None:
                    shown = f"'{arg.name}'" if isinstance(arg, Ref) else "a number"
                    self.err(f"{statement.op}'s last argument may only be the word bias, not {shown}", arg.span, f"usage: {definition.usage}")
            else:
                options = choices(statement.op)
                value = arg.name if isinstance(arg, Ref) and arg.name in options else None
                if value is None:
                    shown = f"'{arg.name}'" if isinstance(arg, Ref) else "a number"
                    hint = did_you_mean(arg.name, options) if isinstance(arg, Ref) else None
                    self.err(f"{statement.op} {kind} must be {', '.join(options[:-1])} or {options[-1]}, not {shown}", arg.span, hint)
            ok = ok and value is not None
            found[kind] = value
        return found if ok else None

    def _size(self, arg: Expr) -> int | None:
        try:
            value = evaluate(arg, self.namespace.lookup)
        except EvalError as exc:
            self._size_error(exc.diagnostic, arg)
            return None
        except AlreadyReported:
            self.ok = False
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or not 1 <= value <= 1 << 26:
            self._size_error(error(f"a feature size must be a whole number from 1 to {1 << 26}, not {value}", arg.span), arg)
            return None
        return value

    def _size_error(self, diagnostic: Diagnostic, size: Expr) -> None:
        self.ok = False
        if self.blame is None:
            self.diags.append(diagnostic)
        else:
            self.blame(diagnostic, size, self.block.name)



def _apply_places(block: Block, places: Sequence[Place], sequence_parallel: bool, diags: list[Diagnostic]) -> Block | None:
    """Insert each placed collective right after its op and route that op's consumers through it."""
    ops = list(block.ops)
    names = {op.name for op in ops} | {block.param}
    result = block.result
    followed: dict[str, str] = {}
    ok = True
    for place in places:
        kind_error = _kind_error(place)
        if kind_error is not None:
            diags.append(kind_error)
            ok = False
            continue
        for target in place.targets:
            position = next((i for i, op in enumerate(ops) if op.name == target.after and not op.placed), None)
            if position is None:
                known = [op.name for op in block.ops]
                hint = did_you_mean(target.after, known) or f"block '{block.name}' defines: {', '.join(known)}"
                diags.append(error(f"place: block '{block.name}' has no op '{target.after}'", target.span, hint=hint))
                ok = False
                continue
            if target.after in followed:
                diags.append(error(f"a collective is already placed after '{target.after}' (at {followed[target.after]})", target.span))
                ok = False
                continue
            label = target.alias or target.after
            name = f"{place.kind}_{label}"
            if name in names:
                diags.append(error(f"place: the name '{label}' is taken; add `as <name>`", target.span))
                ok = False
                continue
            names.add(name)
            followed[target.after] = str(target.span)
            placed = Op(name, place.kind, (target.after,), target.span, dim=default_dim(place.kind, sequence_parallel), label=label, placed=True)
            ops = _reroute(ops, target.after, name, position)
            ops.insert(position + 1, placed)
            if result == target.after:
                result = name
    if not ok:
        return None
    return Block(block.name, block.param, tuple(ops), result, block.span)


def _reroute(ops: list[Op], old: str, new: str, position: int) -> list[Op]:
    rerouted = ops[: position + 1]
    for op in ops[position + 1 :]:
        inputs = tuple(new if name == old else name for name in op.inputs)
        rerouted.append(op if inputs == op.inputs else replace(op, inputs=inputs))
    return rerouted
