"""The ops a layer's forward calls beside torch's: attention and rope over fused Q, K, V, and its reorderings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from par.codegen.pytorch.runtime.context import context_positions, split_heads
from par.codegen.pytorch.runtime.spec import (
    CP,
    ENDS,
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    ROPE_FACTOR,
    ROPE_HIGH_FREQ_FACTOR,
    ROPE_LOW_FREQ_FACTOR,
    ROPE_ORIGINAL_MAX_POSITIONS,
    ROPE_SCALING,
    ROPE_THETA,
    TP,
)

# -- Ops ----------------------------------------------------------------------------------------


class KVCache:
    """One layer's keys and values for one microbatch of sequences on this rank, as generation
    hands them to the layer: `k` and `v` [sequences, kv heads, context, HEAD_DIM], allocated once;
    `position`, the first position of this call (a 0-d tensor, so that decode steps keep one
    shape); `decoding`, one new position per sequence (else the prompt, from position 0)."""

    __slots__ = ("k", "v", "position", "decoding")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor, decoding: bool) -> None:
        self.k, self.v, self.position, self.decoding = k, v, position, decoding


def recomputed(function, *args, **kwargs):
    """function(*args, **kwargs), whose backward runs it again rather than keeping what it saves
    (the mesh's `recompute`): torch.utils.checkpoint, non-reentrant, which keeps only the
    tensors it is given and restores the RNG state for the rerun, so the gradients are those of
    the plain call. Without autograd (generation) there is nothing to keep: the plain call."""
    if not torch.is_grad_enabled():
        return function(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


def causal_attention(
    qkv: torch.Tensor, heads: int, kv_heads: int, groups: int = 1, cache: KVCache | None = None
) -> torch.Tensor:
    """Causal self-attention over fused Q, K, V features, sequence-first: [seq, batch, features].

    `qkv` holds `groups` blocks of [Q heads | K heads | V heads] along its features: one block
    for the whole model or for one rank's heads, one block per tensor-parallel rank after an
    AllGather of head-sharded QKV. `heads` and `kv_heads` count the heads of all blocks.
    With a `cache`, the prompt's keys and values are written into it (attention over the prompt
    as in training), or a decode step's one position is, and its query attends over the whole
    cache, the positions after it masked: the same shapes at every step.
    """
    seq, batch, _ = qkv.shape
    q, k, v = split_heads(qkv, heads, kv_heads, groups)  # strided views: SDPA takes them as they are
    visible = None  # a decode step's mask: the cached positions up to its own
    if ENDS and cache is not None:
        if cache.decoding:
            cache.k.index_copy_(2, cache.position.view(1), k.to(cache.k.dtype))
            cache.v.index_copy_(2, cache.position.view(1), v.to(cache.v.dtype))
            visible = (torch.arange(cache.k.shape[2], device=qkv.device) <= cache.position).unsqueeze(0)
            k, v = cache.k.to(q.dtype), cache.v.to(q.dtype)
        else:
            cache.k[:, :, :seq] = k
            cache.v[:, :, :seq] = v
    # Grouped-query attention: query head h uses KV head h // (heads // kv_heads). In fp16/bf16
    # SDPA reads K and V in place (enable_gqa). On CUDA only FlashAttention takes enable_gqa and it
    # runs no fp32, so fp32 would fall to the math backend and keep the seq × seq scores: in fp32
    # K and V are expanded per query head here on every device, and kept (docs/cost.md).
    expand = heads != kv_heads and q.dtype not in (torch.float16, torch.bfloat16)
    if expand:
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    gqa = heads != kv_heads and not expand
    if visible is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * HEAD_DIM)


def rope_frequencies(device: torch.device) -> torch.Tensor:
    """The rotary embedding's inverse frequencies, [HEAD_DIM // 2] in fp32, computed as
    transformers' rope init functions compute them (default, `linear`, `llama3`)."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64, device=device).float() / HEAD_DIM))
    if ROPE_SCALING == "linear":
        inv_freq = inv_freq / ROPE_FACTOR
    if ROPE_SCALING == "llama3":
        # Llama 3.1: long wavelengths divided by the factor, short ones kept, the band between smoothed.
        low_freq_wavelen = ROPE_ORIGINAL_MAX_POSITIONS / ROPE_LOW_FREQ_FACTOR
        high_freq_wavelen = ROPE_ORIGINAL_MAX_POSITIONS / ROPE_HIGH_FREQ_FACTOR
        wavelen = 2 * torch.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / ROPE_FACTOR, inv_freq)
        band = ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR
        smooth = (ROPE_ORIGINAL_MAX_POSITIONS / wavelen - ROPE_LOW_FREQ_FACTOR) / band
        smoothed = (1 - smooth) * scaled / ROPE_FACTOR + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rotate(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    groups: int,
    back: bool,
    start: torch.Tensor | None = None,
    cp_rank: int | None = None,
) -> torch.Tensor:
    """The Q and K heads of fused Q, K, V features (laid out as `causal_attention` reads them)
    turned by each position's angles, or turned `back` by them; V as it is.

    Positions are 0 .. seq - 1 (from `start` in a decode step): the rotary embedding runs on the
    whole sequence (its signatures take no sequence split), or under context parallelism on
    context-parallel rank `cp_rank`'s part of it (None: the whole sequence, as Reference's).
    Per head, the pairs are (i, i + HEAD_DIM / 2): transformers' rotate_half, so Hugging Face
    checkpoints load as they are.
    """
    seq, batch, features = qkv.shape
    q_size, kv_size = heads // groups * HEAD_DIM, kv_heads // groups * HEAD_DIM
    qk, v = qkv.reshape(seq, batch, groups, q_size + 2 * kv_size).split([q_size + kv_size, kv_size], dim=-1)
    qk = qk.reshape(seq, batch, groups, (q_size + kv_size) // HEAD_DIM, HEAD_DIM)
    if CP > 1 and cp_rank is not None:
        positions = context_positions(seq, cp_rank, qkv.device)
    else:
        positions = torch.arange(seq, device=qkv.device) + (0 if start is None else start)
    angles = positions.float()[:, None] * rope_frequencies(qkv.device)
    angles = torch.cat((angles, angles), dim=-1)[:, None, None, None, :]  # [seq, 1, 1, 1, HEAD_DIM]
    cos, sin = angles.cos().to(qkv.dtype), angles.sin().to(qkv.dtype)
    first, second = qk.chunk(2, dim=-1)
    half_turned = torch.cat((-second, first), dim=-1)
    turned = qk * cos - half_turned * sin if back else qk * cos + half_turned * sin
    return torch.cat((turned.flatten(-2), v), dim=-1).reshape(seq, batch, features)


class RotaryEmbedding(torch.autograd.Function):
    """The rotary embedding; its backward turns the gradient back by the same angles (the
    rotation's transpose), so autograd keeps no tensor for it."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, kv_heads: int, groups: int, cp_rank: int | None) -> torch.Tensor:
        ctx.heads = (heads, kv_heads, groups, cp_rank)
        return rotate(qkv, heads, kv_heads, groups, back=False, cp_rank=cp_rank)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        heads, kv_heads, groups, cp_rank = ctx.heads
        return rotate(grad, heads, kv_heads, groups, back=True, cp_rank=cp_rank), None, None, None, None


def rotary_embedding(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    groups: int = 1,
    cache: KVCache | None = None,
    cp_rank: int | None = None,
) -> torch.Tensor:
    """Rotary position embedding of the Q and K heads of fused Q, K, V features; `heads`,
    `kv_heads` and `groups` as `causal_attention` takes them. A decode step (`cache`) turns its
    position by the cache's; generation needs no backward. `cp_rank`: the part of the sequence
    this rank holds under context parallelism."""
    if ENDS and cache is not None and cache.decoding:
        return rotate(qkv, heads, kv_heads, groups, back=False, start=cache.position)
    return RotaryEmbedding.apply(qkv, heads, kv_heads, groups, cp_rank)


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
