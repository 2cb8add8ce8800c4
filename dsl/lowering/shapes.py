"""Global shapes of a block's values, by each op's shape rule (par.dsl.registry.ops).

Shapes are [batch, seq, features] for one microbatch of one data-parallel replica; under
context parallelism seq is one rank's part of the sequence (seq / cp: chunks i and 2·cp − 1 − i).
"""

from __future__ import annotations

from par.dsl.checks.deployment import Block, Deployment, Op
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.registry.ops import OPS, Shape, ShapeError


def stream_shape(deployment: Deployment) -> Shape:
    model, mesh = deployment.model, deployment.mesh
    return (model.batch // (mesh.dp * mesh.microbatches), model.seq // mesh.cp, model.hidden)


def infer_shapes(deployment: Deployment) -> tuple[dict[str, Shape], list[Diagnostic]]:
    block: Block = deployment.block
    shapes: dict[str, Shape] = {block.param: stream_shape(deployment)}
    diags: list[Diagnostic] = []
    for op in block.ops:
        if any(name not in shapes for name in op.inputs):
            continue  # its input already failed
        shape = _out_shape(op, [shapes[name] for name in op.inputs], deployment, diags)
        if shape is not None:
            shapes[op.name] = shape
    result = shapes.get(block.result)
    if result is not None and result != shapes[block.param]:
        producer = next((op for op in block.ops if op.name == block.result), None)
        diags.append(
            error(
                f"block '{block.name}' returns '{block.result}' of shape {list(result)}, but its input "
                f"'{block.param}' is {list(shapes[block.param])}; a layer must keep the residual stream's shape",
                producer.span if producer else block.span,
            )
        )
    return shapes, diags


def _out_shape(op: Op, inputs: list[Shape], deployment: Deployment, diags: list[Diagnostic]) -> Shape | None:
    if op.op not in OPS:  # a written collective keeps the global shape
        return inputs[0]
    try:
        return OPS[op.op].shape(op, inputs, deployment.model)
    except ShapeError as exc:
        diags.append(error(str(exc), op.span))
        return None
