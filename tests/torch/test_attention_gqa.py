"""Grouped-query attention takes the same path on every device: enable_gqa only in fp16/bf16.

On CUDA only FlashAttention takes enable_gqa and it runs no fp32, so an fp32 call with
enable_gqa would fall to the math backend there (seq × seq scores kept). The code therefore
expands K and V itself in fp32, which the cost model counts (tests/torch/test_saved_tensors.py).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from par.codegen.pytorch.runtime import context, ops  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BATCH, SEQ = 4, 2, 8, 2, 5


def _per_head_attention(qkv: torch.Tensor) -> torch.Tensor:
    """The oracle: softmax(q·kᵀ/√d + causal mask)·v for each query head h with KV head h // 2, written out."""
    q, k, v = qkv.float().split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    outs = []
    for head in range(HEADS):
        kv = head // (HEADS // KV_HEADS)
        qh, kh, vh = (t[..., i * HEAD_DIM : (i + 1) * HEAD_DIM] for t, i in ((q, head), (k, kv), (v, kv)))
        scores = (qh @ kh.transpose(-1, -2) / HEAD_DIM**0.5).masked_fill(~mask, float("-inf"))
        outs.append(scores.softmax(-1) @ vh)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize(("dtype", "gqa_kernel", "tolerance"), [(torch.float32, False, 1e-5), (torch.bfloat16, True, 2e-2)])
def test_enable_gqa_only_in_half_precision_and_fp32_expands_k_and_v(monkeypatch, dtype, gqa_kernel, tolerance):
    for module in (ops, context):  # the heads are split in context (split_heads), attended in ops
        monkeypatch.setattr(module, "HEAD_DIM", HEAD_DIM)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recorded(q, k, v, **options):
        calls.append((k.shape[1], options["enable_gqa"]))
        return sdpa(q, k, v, **options)

    monkeypatch.setattr(ops.F, "scaled_dot_product_attention", recorded)
    qkv = torch.randn(BATCH, SEQ, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = ops.causal_attention(qkv.transpose(0, 1).contiguous(), HEADS, KV_HEADS)  # the stream is sequence-first
    assert calls == [(KV_HEADS, True)] if gqa_kernel else calls == [(HEADS, False)]
    # bf16: relative to values of order 1, a few bf16 steps (2^-8 each)
    assert torch.allclose(out.transpose(0, 1).float(), _per_head_attention(qkv), atol=tolerance, rtol=tolerance)
