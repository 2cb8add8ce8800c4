"""The registry's `keeps_parts` (par.dsl.registry.ops), held to the PyTorch code the ops run.

The compiler leaves out an AllGather's backward ReduceScatter when every op after it keeps the
ranks' parts apart (par.dsl.lowering.backward). Here each declaration is measured: cut the
inputs and the output into TP parts along a dim, and take the gradient of one output part; the
op keeps parts apart along that dim exactly when that gradient is zero outside the same part
of every input. Attention and rope read their fused QKV as the gathered tensor holds it (one
block of heads per rank); attention runs grouped-query (4 heads, 2 KV heads).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, F401 (the emitter's expressions name F)

from par.codegen.pytorch.layer import CODE_DIMS  # noqa: E402
from par.codegen.pytorch.ops import ELEMENTWISE  # noqa: E402
from par.codegen.pytorch.runtime import ops  # noqa: E402
from par.dsl.lowering.placement import S_LAST, S_SEQ  # noqa: E402
from par.dsl.registry.ops import OPS  # noqa: E402

TP = 2
DIMS = {"seq": S_SEQ.dim, "features": S_LAST.dim}
HEADS = ("attention", "rope")  # the ops over fused Q, K, V heads


def _run(op: str, inputs: list) -> torch.Tensor:
    if op == "attention":
        return ops.causal_attention(inputs[0], heads=ops.HEADS, kv_heads=ops.KV_HEADS, groups=TP)
    if op == "rope":
        return ops.rotary_embedding(inputs[0], heads=ops.HEADS, kv_heads=ops.KV_HEADS, groups=TP)
    return eval(ELEMENTWISE[op].format(*(f"inputs[{index}]" for index in range(len(inputs)))))


def _inputs(op: str) -> list:
    generator = torch.Generator().manual_seed(0)
    width = (ops.HEADS + 2 * ops.KV_HEADS) * ops.HEAD_DIM if op in HEADS else 8
    return [torch.randn(2, 6, width, generator=generator, requires_grad=True) for _ in range(OPS[op].syntax.tensors)]


def _keeps_parts_apart(op: str, dim: int) -> bool:
    inputs = _inputs(op)
    output = _run(op, inputs)
    for part in range(TP):
        weights = torch.zeros_like(output)
        weights.chunk(TP, dim=dim)[part].normal_()
        grads = torch.autograd.grad((output * weights).sum(), inputs, retain_graph=True, allow_unused=True)
        for grad in grads:
            if grad is None:
                continue
            outside = [chunk for index, chunk in enumerate(grad.chunk(TP, dim=dim)) if index != part]
            if any(chunk.abs().max() > 0 for chunk in outside):
                return False
    return True


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("op", [*ELEMENTWISE, *HEADS])
def test_an_op_keeps_parts_apart_exactly_where_the_registry_says(op, dim, monkeypatch):
    monkeypatch.setattr(ops, "TP", TP)
    # the registry names the DAG's dims, [batch, seq, features]; model.py's tensors are [seq, batch, features]
    assert _keeps_parts_apart(op, CODE_DIMS[DIMS[dim]]) == (DIMS[dim] in OPS[op].keeps_parts)


def test_ops_with_parameters_declare_no_parts_kept_apart():
    # a norm or linear is never passed through by a partial gradient, so it never needs one
    assert {name for name, spec in OPS.items() if spec.keeps_parts} == {*ELEMENTWISE, *HEADS}
