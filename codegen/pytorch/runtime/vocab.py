"""The model's ends, vocabulary-parallel (Megatron's): the token embedding and the cross-entropy.

Each tensor-parallel rank holds PADDED_VOCAB // TP rows of the embedding (and of the LM head):
rows [tp_rank * rows, (tp_rank + 1) * rows) of the vocabulary, padded with rows no token id
reaches. No rank ever holds logits over the whole vocabulary.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from par.codegen.pytorch.runtime.collectives import _all_gather, _all_reduce
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.pairs import all_reduce, reduce_scatter
from par.codegen.pytorch.runtime.spec import HIDDEN, PADDED, PADDED_VOCAB, SEQUENCE_PARALLEL, TP, VOCAB

# -- The model's ends: vocabulary-parallel embedding and cross-entropy --------------------------


class _VocabLookup(torch.autograd.Function):
    """This rank's rows of the embedding for each token id, zero for ids of other ranks' rows.

    Keeps only the local row of each id (-1: another rank's) for the backward, which adds each
    token's gradient to its row.
    """

    @staticmethod
    def forward(ctx, ids, weight, first):
        local = ids - first
        if TP > 1:
            elsewhere = (local < 0) | (local >= weight.shape[0])
            local = local.masked_fill(elsewhere, -1)
            rows = F.embedding(local.clamp(min=0), weight).masked_fill_(elsewhere.unsqueeze(-1), 0)
        else:
            rows = F.embedding(local, weight)
        ctx.save_for_backward(local)
        ctx.shape = weight.shape
        return rows

    @staticmethod
    def backward(ctx, grad):
        (local,) = ctx.saved_tensors
        grad_weight = grad.new_zeros(ctx.shape)
        if TP > 1:
            here = local >= 0
            grad_weight.index_add_(0, local[here], grad[here])
        else:
            grad_weight.index_add_(0, local.flatten(), grad.flatten(0, 1))
        return None, grad_weight, None


class VocabParallelEmbedding(nn.Module):
    """`embed`: token ids [batch, seq] -> the residual stream, sequence-first [seq, batch, HIDDEN],
    each rank looking up its rows.

    The lookups are a partial sum over the tensor-parallel group: the DAG's `allreduce_embed`
    makes them whole, or under sequence parallelism `reducescatter_embed` leaves each rank its
    part of the sequence.
    """

    def __init__(self, groups: Groups) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(PADDED_VOCAB // TP, HIDDEN))
        self.first = groups.tp_rank * (PADDED_VOCAB // TP)
        if TP > 1:
            self.tp_group = groups.tp

    def forward(self, ids: torch.Tensor, split: bool = True) -> torch.Tensor:
        """`split` False: the sequence is not split even under sequence parallelism (a decode step)."""
        rows = _VocabLookup.apply(ids.t(), self.weight, self.first)  # looked up sequence-first: no copy of the rows
        if TP > 1:
            if SEQUENCE_PARALLEL and split:
                return reduce_scatter(rows, dim=0, group=self.tp_group)
            else:
                return all_reduce(rows, self.tp_group)
        else:
            return rows


def padding_rows(first: int, logits: torch.Tensor) -> torch.Tensor:
    """The local rows of this rank past the vocabulary (padding), as indices."""
    rows = logits.shape[-1]
    return torch.arange(min(max(VOCAB - first, 0), rows), rows, device=logits.device)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy from this rank's logits [batch, seq, rows] (Megatron's).

    The largest logit per token is AllReduced (MAX), then the sum of exp(logit - max) and the
    target's logit (on the rank that holds its row, zero elsewhere) are AllReduced (SUM) as one
    tensor: the DAG's `allreduce_loss_max` and `allreduce_loss_sum`. Computed in fp32. Targets
    below zero have no loss and no gradient. Keeps the softmax of this rank's logits and each
    target's local row (-1: not here) for the backward: softmax - one-hot.
    """

    @staticmethod
    def forward(ctx, logits, targets, first, group):
        ctx.dtype = logits.dtype
        logits = logits.float()  # the head's output itself when it is fp32: never changed in place
        if PADDED:  # the padding rows' logits never win the softmax
            logits = logits.index_fill(-1, padding_rows(first, logits), float("-inf"))
        largest = logits.max(dim=-1, keepdim=True).values
        if TP > 1:
            _all_reduce(largest, group, op=dist.ReduceOp.MAX)
        shifted = logits - largest
        local = targets - first
        here = (local >= 0) & (local < shifted.shape[-1])
        local = local.masked_fill(~here, -1)
        target_logit = shifted.gather(-1, local.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill_(~here, 0)
        softmax = shifted.exp_()
        sums = torch.stack([softmax.sum(dim=-1), target_logit], dim=-1)
        if TP > 1:
            _all_reduce(sums, group)
        valid = targets >= 0
        loss = (sums[..., 0].log() - sums[..., 1]).masked_fill_(~valid, 0)
        softmax.div_(sums[..., :1]).masked_fill_(~valid.unsqueeze(-1), 0)
        ctx.save_for_backward(softmax, local)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, local = ctx.saved_tensors
        here = local >= 0
        flat = softmax.view(-1, softmax.shape[-1])
        flat[here.flatten().nonzero().squeeze(-1), local[here]] -= 1
        return softmax.mul_(grad.unsqueeze(-1)).to(ctx.dtype), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Per-token losses [batch, seq] from this rank's logits, whole on every rank of the group."""
    first = groups.tp_rank * (PADDED_VOCAB // TP)
    if TP > 1:
        return _VocabParallelCrossEntropy.apply(logits, targets, first, groups.tp)
    else:
        return _VocabParallelCrossEntropy.apply(logits, targets, first, None)


def greedy_token(logits: torch.Tensor, groups: Groups) -> torch.Tensor:
    """The id of each sequence's largest logit over the whole vocabulary, [sequences] from this
    rank's logits [sequences, rows]; ties go to the smallest id, as argmax's do.

    Each rank's best (value, id) per sequence, gathered over tp as [sequences, 2] fp32 pairs (ids
    below 2^24 are exact in fp32): no rank holds logits over the whole vocabulary.
    """
    logits = logits.float()
    if PADDED:
        logits = logits.index_fill(-1, padding_rows(groups.tp_rank * (PADDED_VOCAB // TP), logits), float("-inf"))
    indices = logits.argmax(dim=-1)
    if TP > 1:
        values = logits.gather(-1, indices.unsqueeze(-1)).squeeze(-1)
        pairs = torch.stack([values, (indices + groups.tp_rank * (PADDED_VOCAB // TP)).float()], dim=-1)
        found = _all_gather(pairs.unsqueeze(0), dim=0, group=groups.tp)  # [TP, sequences, 2]
        winner = found[..., 0].argmax(dim=0)  # the first rank holding the largest: the smallest id
        return found[..., 1].gather(0, winner.unsqueeze(0)).squeeze(0).long()
    else:
        return indices
