"""Context parallelism: each rank's part of the sequence, and attention over the whole sequence
from it (docs/language.md, Context parallelism; the DAG's nodes: par.dsl.dag.ring)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.collectives import _all_gather, _reduce_scatter
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.spec import CP, CP_ATTENTION, HEAD_DIM
from par.codegen.pytorch.runtime.trace import _record

# -- Context parallelism ------------------------------------------------------------------------
# The sequence is cut into 2·CP chunks; cp rank c holds chunks c and 2·CP − 1 − c, one after the
# other, so that every rank has as much causal work (the early chunk sees few keys, the late one
# many). Inputs, positions and targets follow the same cut. Attention passes the keys and values
# of each rank's part around the ring (CP_ATTENTION "ring"), or gathers them once ("allgather");
# each partial result comes with its logsumexp, and the partial results merge by it.


def context_part(tensor: torch.Tensor, dim: int, cp_rank: int) -> torch.Tensor:
    """Chunks `cp_rank` and 2·CP − 1 − `cp_rank` of 2·CP along `dim` (the sequence), one after the other."""
    chunks = tensor.chunk(2 * CP, dim=dim)
    return torch.cat([chunks[cp_rank], chunks[2 * CP - 1 - cp_rank]], dim=dim)


def context_positions(length: int, cp_rank: int, device: torch.device) -> torch.Tensor:
    """The positions in the whole sequence of the `length` tokens cp rank `cp_rank` holds."""
    chunk = length // 2
    first = torch.arange(chunk, device=device)
    return torch.cat([first + cp_rank * chunk, first + (2 * CP - 1 - cp_rank) * chunk])


def _expand(kv: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped-query attention: query head h reads KV head h // (heads // kv_heads)."""
    return kv.repeat_interleave(heads // kv.shape[1], dim=1) if kv.shape[1] != heads else kv


def _fold(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The gradient of expanded K or V summed back onto each KV head."""
    batch, heads, length, dim = grad.shape
    return grad.view(batch, kv_heads, heads // kv_heads, length, dim).sum(2) if heads != kv_heads else grad


def _scores(q: torch.Tensor, k: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """q·kᵀ / √HEAD_DIM in fp32, -inf where a key is not visible to a query."""
    scores = q.float() @ _expand(k, q.shape[1]).float().transpose(-1, -2) * HEAD_DIM**-0.5
    return scores if visible is None else scores.masked_fill(~visible, float("-inf"))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None):
    """One block's partial attention: its output (fp32) and logsumexp per query, [batch, heads, queries]."""
    scores = _scores(q, k, visible)
    lse = scores.logsumexp(dim=-1)
    return (scores - lse.unsqueeze(-1)).exp() @ _expand(v, q.shape[1]).float(), lse


def _attend_backward(q, k, v, visible, lse, delta, grad):
    """The gradients of q, k and v of one block's attention, from the merged output's logsumexp
    `lse` and `delta` (rowsum of the output times its gradient): FlashAttention's backward."""
    probabilities = (_scores(q, k, visible) - lse.unsqueeze(-1)).exp()
    grad = grad.float()
    grad_v = probabilities.transpose(-1, -2) @ grad
    grad_scores = probabilities * (grad @ _expand(v, q.shape[1]).float().transpose(-1, -2) - delta.unsqueeze(-1))
    grad_scores *= HEAD_DIM**-0.5
    grad_q = grad_scores @ _expand(k, q.shape[1]).float()
    grad_k = grad_scores.transpose(-1, -2) @ q.float()
    return grad_q, _fold(grad_k, k.shape[1]), _fold(grad_v, k.shape[1])


def _causal(length: int, device: torch.device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def _pairs(cp_rank: int, origin: int, length: int) -> tuple[slice, slice, bool]:
    """Which queries of cp rank `cp_rank` see which keys of the block of cp rank `origin`, by
    (query chunk, key chunk) pair: (query rows, key rows, causal within them).

    The own block: both chunks, causal (the second chunk sees all of the first). An earlier
    rank's block (origin < cp_rank): both query chunks see its first chunk, neither its second
    (2·CP − 1 − origin comes after both). A later rank's block: only the second query chunk
    sees it, both of its chunks. Every step is half of the block's pairs: the work is even.
    """
    half = length // 2
    if origin == cp_rank:
        return slice(0, length), slice(0, length), True
    if origin < cp_rank:
        return slice(0, length), slice(0, half), False
    return slice(half, length), slice(0, length), False


def _ring_exchange(send: torch.Tensor, receive: torch.Tensor, groups: Groups):
    """Posts the send of `send` to the next cp rank and the receive of `receive` from the
    previous one as one batch (`batch_isend_irecv`; one group on NCCL, which starts both at once),
    so that no backend deadlocks; returns the requests to wait on. The trace records them in the
    DAG's order (an even cp rank's send first, an odd one's receive): gloo also posts them in that
    order, NCCL in none."""
    ring, rank = groups.cp_ranks, groups.cp_rank
    following, previous = ring[(rank + 1) % CP], ring[(rank - 1) % CP]
    operations = [(dist.isend, send, following, "send"), (dist.irecv, receive, previous, "recv")]
    if rank % 2:
        operations.reverse()
    for _, tensor, peer, op in operations:
        _record(op, tensor, peer=peer)
    return dist.batch_isend_irecv([dist.P2POp(function, tensor, peer) for function, tensor, peer, _ in operations])


def _wait(requests) -> None:
    for request in requests:
        request.wait()


class _RingAttention(torch.autograd.Function):
    """Causal attention of this rank's queries over the whole sequence, the keys and values going
    around the ring (the DAG's ring steps, sends, recvs and attn_merge).

    Forward: at step s this rank attends to the block of cp rank c − s while the next block is
    already in flight (sent on to c + 1, received from c − 1); each partial output merges into the
    running one by the logsumexp. Keeps q, k, v (views of the QKV it reads), the merged output
    and its logsumexp, never a received block: the backward passes the blocks around the ring
    again, in the same order. The gradient of each block's keys and values follows the block one
    step behind, gathering each rank's share, and the last rank hands it to the block's owner,
    which adds its own: per step one block and one gradient pass, as the cost model counts.
    """

    @staticmethod
    def forward(ctx, q, k, v, groups):
        length, rank = q.shape[2], groups.cp_rank
        block = torch.stack([k, v])  # what travels: [2, batch, kv heads, length, HEAD_DIM]
        # sequence-first in memory, as the layer reads it on: the output is saved once, as its view
        out = torch.empty((length, *q.shape[:2], q.shape[3]), dtype=torch.float32, device=q.device).permute(1, 2, 0, 3)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        for step in range(CP):
            if step < CP - 1:  # the next block travels while this one is computed
                arriving = torch.empty_like(block)
                requests = _ring_exchange(block, arriving, groups)
            rows, keys, causal = _pairs(rank, (rank - step) % CP, length)
            visible = _causal(length, q.device) if causal else None
            part, part_lse = _attend(q[:, :, rows], block[0][:, :, keys], block[1][:, :, keys], visible)
            if step == 0:
                out.copy_(part)
                lse.copy_(part_lse)
            else:  # the log-sum-exp merge: each part rescaled by exp(its lse − the merged lse)
                merged = torch.logaddexp(lse[:, :, rows], part_lse)
                old = (lse[:, :, rows] - merged).exp().unsqueeze(-1)
                out[:, :, rows] = out[:, :, rows] * old + part * (part_lse - merged).exp().unsqueeze(-1)
                lse[:, :, rows] = merged
            if step < CP - 1:
                _wait(requests)
                block = arriving
        out = out.to(q.dtype)
        ctx.groups = groups
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        groups = ctx.groups
        length, rank = q.shape[2], groups.cp_rank
        delta = (grad.float() * out.float()).sum(-1)
        grad_q = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        block = torch.stack([k, v])
        passing: list = []  # the gradient in flight: its requests and buffer
        for step in range(CP):
            if step < CP - 1:
                arriving = torch.empty_like(block)
                requests = _ring_exchange(block, arriving, groups)
            rows, keys, causal = _pairs(rank, (rank - step) % CP, length)
            visible = _causal(length, q.device) if causal else None
            k_keys, v_keys = block[0][:, :, keys], block[1][:, :, keys]
            grads = _attend_backward(
                q[:, :, rows], k_keys, v_keys, visible, lse[:, :, rows], delta[:, :, rows], grad[:, :, rows]
            )
            grad_q[:, :, rows] += grads[0]
            share = torch.zeros_like(block)  # this rank's share of the gradient of the block's keys and values
            share[0][:, :, keys] = grads[1].to(share.dtype)
            share[1][:, :, keys] = grads[2].to(share.dtype)
            if step == 0:
                own = share
            else:
                if passing:  # the shares of the ranks between the block's owner and this one
                    _wait(passing[0])
                    share += passing[1]
                received = torch.empty_like(share)
                passing = [_ring_exchange(share, received, groups), received]
            if step < CP - 1:
                _wait(requests)
                block = arriving
        if passing:  # every other rank's share of this rank's block
            _wait(passing[0])
            own += passing[1]
        return grad_q.to(q.dtype), own[0], own[1], None


class _GatheredAttention(torch.autograd.Function):
    """Causal attention of this rank's queries over the whole sequence after one AllGather of the
    group's keys and values (the DAG's allgather_kv and ring_attention). Keeps q, the gathered
    keys and values, the output and its logsumexp; the backward ReduceScatters the gradients of
    the keys and values back to the ranks that hold them."""

    @staticmethod
    def forward(ctx, q, k, v, groups):
        gathered = _all_gather(torch.stack([k, v]), dim=3, group=groups.cp)
        out, lse = _attend(q, gathered[0], gathered[1], _gathered_visible(q.shape[2], groups.cp_rank, q.device))
        out = out.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3).to(q.dtype)  # sequence-first in memory
        ctx.groups = groups
        ctx.save_for_backward(q, gathered, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, gathered, out, lse = ctx.saved_tensors
        groups = ctx.groups
        visible = _gathered_visible(q.shape[2], groups.cp_rank, q.device)
        delta = (grad.float() * out.float()).sum(-1)
        grad_q, grad_k, grad_v = _attend_backward(q, gathered[0], gathered[1], visible, lse, delta, grad)
        mine = _reduce_scatter(torch.stack([grad_k, grad_v]).to(gathered.dtype), dim=3, group=groups.cp)
        return grad_q.to(q.dtype), mine[0], mine[1], None


def _gathered_visible(length: int, cp_rank: int, device: torch.device) -> torch.Tensor:
    """Which of the gathered keys (every cp rank's part, in cp rank order) each of this rank's queries sees."""
    queries = context_positions(length, cp_rank, device)
    keys = torch.cat([context_positions(length, rank, device) for rank in range(CP)])
    return keys.unsqueeze(0) <= queries.unsqueeze(1)


def split_heads(
    qkv: torch.Tensor, heads: int, kv_heads: int, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K and V of fused sequence-first features ([seq, batch, features], `groups` blocks of
    [Q heads | K heads | V heads]), each [batch, heads, seq, HEAD_DIM]: strided views, no copy."""
    seq, batch, _ = qkv.shape
    q_size, kv_size = heads // groups * HEAD_DIM, kv_heads // groups * HEAD_DIM
    q, k, v = qkv.reshape(seq, batch, groups, q_size + 2 * kv_size).split([q_size, kv_size, kv_size], dim=-1)
    q = q.reshape(seq, batch, heads, HEAD_DIM).permute(1, 2, 0, 3)
    k = k.reshape(seq, batch, kv_heads, HEAD_DIM).permute(1, 2, 0, 3)
    v = v.reshape(seq, batch, kv_heads, HEAD_DIM).permute(1, 2, 0, 3)
    return q, k, v


def context_attention(qkv: torch.Tensor, heads: int, kv_heads: int, groups: int = 1, *, mesh: Groups) -> torch.Tensor:
    """Causal self-attention over fused Q, K, V features, sequence-first ([seq, batch, features],
    this rank's part of the sequence; `heads`, `kv_heads` and `groups` as `causal_attention`
    takes them), over the keys and values of the whole sequence: `mesh`, this process's place
    in the mesh, gives its ring."""
    seq, batch, _ = qkv.shape
    q, k, v = split_heads(qkv, heads, kv_heads, groups)
    if CP_ATTENTION == "allgather":
        out = _GatheredAttention.apply(q, k, v, mesh)
    else:
        out = _RingAttention.apply(q, k, v, mesh)
    return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * HEAD_DIM)
