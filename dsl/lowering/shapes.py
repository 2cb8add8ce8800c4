"""Global shapes of a block's values, and the FLOPs and parameters of each op on one device.

Shapes are [batch, seq, features] for one microbatch of one data-parallel replica.
"""

from __future__ import annotations

from par.dsl.checks.deployment import Block, Deployment, Op
from par.dsl.diagnostics import Diagnostic, error

Shape = tuple[int, ...]

# FLOPs per output element of the elementwise ops; matmuls are counted exactly below.
ELEMENTWISE_FLOPS = {"layernorm": 5, "rmsnorm": 4, "gelu": 8, "silu": 4, "add": 1, "mul": 1}


def stream_shape(deployment: Deployment) -> Shape:
    model, mesh = deployment.model, deployment.mesh
    return (model.batch // (mesh.dp * mesh.microbatches), model.seq, model.hidden)


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
    model = deployment.model
    first = inputs[0]
    if op.op == "linear":
        return first[:-1] + (op.out_features,)
    if op.op == "attention":
        want = (model.heads + 2 * model.kv_heads) * model.head_dim
        if first[-1] != want:
            diags.append(
                error(
                    f"attention needs fused Q, K and V: (heads + 2 × kv_heads) × head_dim = "
                    f"({model.heads} + 2 × {model.kv_heads}) × {model.head_dim} = {want} features, "
                    f"but '{op.inputs[0]}' has {first[-1]}",
                    op.span,
                )
            )
            return None
        return first[:-1] + (model.heads * model.head_dim,)
    if len(inputs) == 2 and inputs[0] != inputs[1]:
        diags.append(
            error(
                f"{op.op} of '{op.inputs[0]}' {list(inputs[0])} and '{op.inputs[1]}' {list(inputs[1])}: shapes differ",
                op.span,
            )
        )
        return None
    return first


def elements(shape: Shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def flops(op: str, local_in: Shape, local_out: Shape) -> int:
    """FLOPs one device spends on its shard of the op (multiply-add = 2)."""
    if op == "linear":
        return 2 * elements(local_in) * local_out[-1]
    if op == "attention":
        # QK^T and attention-times-V, over the full seq × seq score matrix of the local heads.
        batch, seq, features = local_out
        return 4 * batch * seq * seq * features
    return ELEMENTWISE_FLOPS.get(op, 0) * elements(local_out)


def params(op: str, local_in: Shape, local_out: Shape) -> int:
    """Parameters one device holds for the op: linear weights (no bias) and norm scales."""
    if op == "linear":
        return local_in[-1] * local_out[-1]
    if op == "layernorm":
        return 2 * local_out[-1]
    if op == "rmsnorm":
        return local_out[-1]
    return 0
