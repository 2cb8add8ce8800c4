"""Lowering: Deployment -> Program, with every needed collective inserted and explained."""

from __future__ import annotations

from dataclasses import replace

from par.dsl.checks.deployment import Deployment, Op
from par.dsl.diagnostics import CompileError, Diagnostic, error
from par.dsl.limits import MAX_BLOCK_OPS, MAX_SEARCH_STATES
from par.dsl.lowering.backward import with_pairs
from par.dsl.lowering.copies import with_copies
from par.dsl.lowering.ends import model_ends
from par.dsl.lowering.placement import (
    S_SEQ,
    Placement,
    R,
    describe,
    dim_name,
    routed_shape,
    stream_placement,
)
from par.dsl.lowering.program import Program, Step
from par.dsl.lowering.shapes import Shape, infer_shapes, stream_shape
from par.dsl.lowering.solve import Choice, Convert, SearchTooLarge, solve
from par.dsl.registry.collectives import COLLECTIVES, block_form, conversion, sent_fraction
from par.dsl.registry.ops import OPS
from par.dsl.registry.statements import default_dim


def lower(deployment: Deployment) -> Program:
    """Raises CompileError with every shape, placement and strict-mode error of the block."""
    shapes, diags = infer_shapes(deployment)
    if diags:
        raise CompileError(diags)
    block = deployment.block
    if len(block.ops) > MAX_BLOCK_OPS:
        raise CompileError([error(f"block '{block.name}' has {len(block.ops)} ops; par places blocks of at most {MAX_BLOCK_OPS}", block.span)])
    try:
        choices = solve(deployment, shapes)
    except SearchTooLarge:
        message = f"placing block '{block.name}' takes more than {MAX_SEARCH_STATES:,} search states"
        hint = "keep fewer values alive across later ops: each one multiplies the placements to try"
        raise CompileError([error(message, block.span, hint=hint)]) from None
    program, diags = _Builder(deployment, shapes).build(choices)
    if diags:
        raise CompileError(diags)
    return program


class _Builder:
    """Replays the solver's choices as Steps, in the order every rank issues them."""

    def __init__(self, deployment: Deployment, shapes: dict[str, Shape]):
        self.deployment = deployment
        self.block = deployment.block
        self.tp = deployment.mesh.tp
        self.ep = deployment.mesh.ep
        self.shapes = shapes
        self.stream = stream_placement(deployment.mesh.sequence_parallel)
        self.ops = {op.name: op for op in self.block.ops}
        self.providers: dict[tuple[str, Placement], str] = {(self.block.param, self.stream): self.block.param}
        self.steps: list[Step] = []
        self.names = {self.block.param}
        self.diags: list[Diagnostic] = []

    def build(self, choices: tuple[Choice, ...]) -> tuple[Program, list[Diagnostic]]:
        for op, choice in zip(self.block.ops, choices, strict=False):  # the last choice converts the result
            for convert in choice.converts:
                self._convert(convert, op)
            self._op(op, choice)
        for convert in choices[-1].converts:
            self._convert(convert, None)
        result = self.providers[(self.block.result, self.stream)]
        steps, param_copied = with_pairs(tuple(self.steps), self.block.param, result, self.stream)
        steps = with_copies(steps, self.block.param, result)
        shape = stream_shape(self.deployment)
        program = Program(
            deployment=self.deployment,
            steps=steps,
            param=self.block.param,
            result=result,
            stream=self.stream,
            stream_shape=shape,
            stream_local=self.stream.local_shape(shape, self.tp),
            param_copied=param_copied,
        )
        # One rank per group: its collectives and slices are the identity.
        if self.tp == 1 or self.ep == 1:
            program = program.without_collectives(tp=self.tp == 1, ep=self.ep == 1)
        return replace(program, ends=model_ends(self.deployment)), self.diags

    def _unique(self, name: str) -> str:
        candidate, counter = name, 2
        while candidate in self.names:
            candidate, counter = f"{name}_{counter}", counter + 1
        self.names.add(candidate)
        return candidate

    def _op(self, op: Op, choice: Choice) -> None:
        signature = choice.signature
        collective = op.op in COLLECTIVES
        if collective:
            origin = next(p for (value, p) in self.providers if value == op.inputs[0])
            inputs: tuple[str, ...] = (self.providers[(op.inputs[0], origin)],)
            if choice.mismatch:
                self.diags.append(_mismatch(op, origin, self.ops.get(op.inputs[0])))
                self.providers[(op.name, signature.output)] = inputs[0]  # carry on to find more errors
                return
        else:
            inputs = tuple(self.providers[(value, need)] for value, need in zip(op.inputs, signature.inputs, strict=True))
        name = self._unique(f"{op.op}_{op.label}" if collective else op.name)
        reason = None
        if collective:
            how = "place statement" if op.placed else "block statement"
            reason = f"written in the spec ({how} at {op.span})"
        self._add(
            name,
            op.op,
            "comm" if collective else "compute",
            inputs,
            (signature.inputs[0], signature.output),
            (self.shapes[op.inputs[0]], self.shapes[op.name]),
            op,
            reason=reason,
        )
        if len(op.inputs) > 1:
            self._operands(op, signature)
        self.providers[(op.name, signature.output)] = name

    def _operands(self, op: Op, signature) -> None:
        """Records each operand's shape and placement on the step when they differ."""
        step = self.steps[-1]
        shapes = tuple(placement.local_shape(self.shapes[value] if not placement.routed else routed_shape(self.shapes[value], self.ep), self.tp) for value, placement in zip(op.inputs, signature.inputs, strict=True))
        if any(shape != step.in_shape for shape in shapes) or any(need != step.in_placement for need in signature.inputs):
            self.steps[-1] = replace(step, operand_shapes=shapes, operand_placements=signature.inputs)

    def _convert(self, convert: Convert, consumer: Op | None) -> None:
        key = (convert.value, convert.target)
        if key in self.providers:
            return
        source = self.providers[(convert.value, convert.source)]
        kind = convert.conversion.name
        name = self._unique(f"{kind}_{convert.value}")
        reason = _reason(convert, self.ops.get(convert.value), consumer, self.stream)
        shape = self.shapes[convert.value]
        at = consumer or self.ops.get(convert.value)
        span = at.span if at else self.block.span
        self._add(name, kind, convert.conversion.kind, (source,), (convert.source, convert.target), (shape, shape), None, span=span, reason=reason, inserted=True)
        self.providers[key] = name
        if self.deployment.strict and convert.conversion.kind == "comm":
            self.diags.append(_strict_error(convert, consumer, span, self.deployment.mesh.sequence_parallel, self.ops))

    def _add(self, name, op_name, kind, inputs, placements, global_shapes, op: Op | None, *, span=None, reason=None, inserted=False):
        source, target = placements
        global_in, global_out = global_shapes
        local_in = self._local(global_in, source, name, op, span)
        local_out = self._local(global_out, target, name, op, span)
        converter = COLLECTIVES[op_name] if kind == "comm" else None
        wire = sent_fraction(converter, source, tp=self.tp, ep=self.ep) if converter is not None else 0
        flops = params = 0
        if kind == "compute":
            spec = OPS[op_name]
            flops = spec.flops(local_in, local_out)
            if spec.computes_on is not None:
                flops = int(flops * spec.computes_on(self.deployment.model))
            params = spec.params(local_in, local_out) + (spec.bias(local_in, local_out) if op and op.bias else 0)
        self.steps.append(
            Step(
                name=name,
                op=op_name,
                kind=kind,
                inputs=inputs,
                in_placement=source,
                out_placement=target,
                in_shape=local_in,
                out_shape=local_out,
                global_in=global_in,
                global_out=global_out,
                span=op.span if op else span,
                flops=flops,
                params=params,
                wire_fraction=(wire.numerator, wire.denominator) if wire else (0, 1),
                style=op.style if op else None,
                bias=bool(op and op.bias),
                reason=reason,
                inserted=inserted,
            )
        )

    def _local(self, shape: Shape, placement: Placement, name: str, op: Op | None, span) -> Shape:
        if placement.routed:  # the experts' share of every member's tokens (divisibility: the checks)
            shape = routed_shape(shape, self.ep)
        if placement.kind == "S" and placement.dim is not None and shape[placement.dim] % self.tp:
            axis = "seq" if placement.dim == 1 else "features"
            self.diags.append(
                error(
                    f"'{name}' is split along {axis} across tp ({self.tp}) ranks, but its {axis} "
                    f"({shape[placement.dim]}) is not divisible by {self.tp}",
                    op.span if op else span,
                )
            )
            return shape
        return placement.local_shape(shape, self.tp)


def _producer_text(producer: Op | None) -> str:
    if producer is None:
        return "the layer input"
    style = f"{producer.style}-parallel " if producer.op == "linear" and producer.style != "replicated" else ""
    return f"the {style}{producer.op} at {producer.span}"


def _reason(convert: Convert, producer: Op | None, consumer: Op | None, stream: Placement) -> str:
    need = f"{consumer.op} '{consumer.name}' at {consumer.span}" if consumer else f"the layer output (the residual stream is {stream})"
    return (
        f"{convert.value} is {describe(convert.source)} from {_producer_text(producer)}, but {need} needs it "
        f"{describe(convert.target)}: {convert.source} -> {convert.target} is {convert.conversion.prose}"
    )


def _strict_error(convert: Convert, consumer: Op | None, span, sequence_parallel: bool, ops: dict) -> Diagnostic:
    kind = convert.conversion.name
    written = block_form(convert.conversion.name)
    where = f"before {consumer.op} '{consumer.name}'" if consumer else "at the end of the layer"
    target_dim = dim_name(convert.target)
    # `place` writes a collective with its default dim; any other must be written in the block.
    takes_dim = "dim" in written.syntax.extras
    placeable = (
        convert.value in ops
        and written.placeable
        and (not takes_dim or target_dim == default_dim(kind, sequence_parallel))
    )
    if placeable:
        fix = f"write `place {kind} after {convert.value}`"
    else:
        dim = f", {target_dim}" if takes_dim else ""
        fix = f"write `{convert.value}_{kind} = {kind}({convert.value}{dim})` in the block and use it"
    return error(
        f"strict: {convert.value} is {convert.source} but is needed {convert.target} {where}; "
        f"that takes {convert.conversion.prose}, which the spec does not write",
        span,
        hint=fix,
    )


def _mismatch(op: Op, origin: Placement, producer: Op | None) -> Diagnostic:
    value = op.inputs[0]
    fits = sorted(
        {found.name for target in (R, S_SEQ) if (found := conversion(origin, target)) and found.written and found.written.placeable}
    )
    if origin == R:
        hint = f"{value} is already replicated: no collective is needed"
    else:
        hint = " or ".join(f"`{kind}`" for kind in fits) + f" fits {value} here"
    return error(
        f"{op.op} of '{op.inputs[0]}' needs {block_form(op.op).needs}, but {op.inputs[0]} is "
        f"{describe(origin)} (from {_producer_text(producer)})",
        op.span,
        hint=hint,
    )
