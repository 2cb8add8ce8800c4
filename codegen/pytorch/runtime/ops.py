"""The ops a layer's forward calls beside torch's: attention over fused Q, K, V and its reorderings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par.codegen.pytorch.runtime.spec import HEAD_DIM, HEADS, KV_HEADS, TP

# -- Ops ----------------------------------------------------------------------------------------


def causal_attention(qkv: torch.Tensor, heads: int, kv_heads: int, groups: int = 1) -> torch.Tensor:
    """Causal self-attention over fused Q, K, V features.

    `qkv` holds `groups` blocks of [Q heads | K heads | V heads] along its features: one block
    for the whole model or for one rank's heads, one block per tensor-parallel rank after an
    AllGather of head-sharded QKV. `heads` and `kv_heads` count the heads of all blocks.
    """
    batch, seq, _ = qkv.shape
    q_size, kv_size = heads // groups * HEAD_DIM, kv_heads // groups * HEAD_DIM
    q, k, v = qkv.reshape(batch, seq, groups, q_size + 2 * kv_size).split([q_size, kv_size, kv_size], dim=-1)
    q = q.reshape(batch, seq, heads, HEAD_DIM).transpose(1, 2)
    k = k.reshape(batch, seq, kv_heads, HEAD_DIM).transpose(1, 2)
    v = v.reshape(batch, seq, kv_heads, HEAD_DIM).transpose(1, 2)
    # Grouped-query attention: query head h uses KV head h // (heads // kv_heads), without copying K and V per head.
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV_HEADS != HEADS)
    return out.transpose(1, 2).reshape(batch, seq, heads * HEAD_DIM)


def group_heads(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Fused [Q | K | V] along `dim` -> one [q | k | v] block per tensor-parallel rank, in rank order."""
    q, k, v = tensor.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=dim)
    blocks = zip(q.chunk(TP, dim=dim), k.chunk(TP, dim=dim), v.chunk(TP, dim=dim), strict=True)
    return torch.cat([part for block in blocks for part in block], dim=dim)


def ungroup_heads(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of group_heads: one [q | k | v] block per rank -> [Q | K | V]."""
    sizes = [HEADS // TP * HEAD_DIM, KV_HEADS // TP * HEAD_DIM, KV_HEADS // TP * HEAD_DIM]
    blocks = [block.split(sizes, dim=dim) for block in tensor.chunk(TP, dim=dim)]
    return torch.cat([block[part] for part in range(3) for block in blocks], dim=dim)
