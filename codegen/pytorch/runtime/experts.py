"""Mixture of experts: the router's choice, the tokens grouped by expert, the token dispatch and
combine over the expert-parallel group, each rank's local experts, and the weighted sum.

Dropless: every token reaches each of its `TOP_K` experts, however many an expert gets
(`capacity_factor` is only the cost model's worst case), so the split sizes of the AllToAlls
differ from rank to rank and step to step; each dispatch exchanges them first.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from par.codegen.pytorch.runtime.spec import (
    EP,
    EXPERTS,
    ROUTER,
    ROUTER_AUX_LOSS_COEF,
    ROUTER_NORM,
    TOP_K,
    TP,
)
from par.codegen.pytorch.runtime.trace import _record

# -- Mixture of experts -------------------------------------------------------------------------
LOCAL_EXPERTS = EXPERTS // EP  # the experts each rank of an expert-parallel group holds


class Routing:
    """One MoE layer's routing of this rank's tokens: the router's top-k choice and weights, the
    order that groups the choices by expert, and (after a dispatch) the tokens of every member
    of the expert-parallel group that this rank's local experts get."""

    def __init__(self, logits: torch.Tensor, chunks: int = 1, scale: float = 1.0, batch_dim: int = 0) -> None:
        self.shape = logits.shape[:-1]
        scores = logits.flatten(0, -2).float()  # [tokens, EXPERTS]
        # softmax_topk: a softmax over every expert, then the top k (Mixtral); topk_softmax: the
        # top k logits, then a softmax over them.
        if ROUTER == "softmax_topk":
            weights, chosen = torch.softmax(scores, dim=-1).topk(TOP_K, dim=-1)
            if ROUTER_NORM:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        else:
            top, chosen = scores.topk(TOP_K, dim=-1)
            weights = torch.softmax(top, dim=-1)
        self.chosen = chosen  # [tokens, TOP_K]
        self.weights = weights.to(logits.dtype)  # [tokens, TOP_K]
        if ROUTER_AUX_LOSS_COEF:
            # The load-balancing loss of each of `chunks` microbatches (parts along the batch), their
            # mean times `scale`.
            parts = zip(
                scores.view(*self.shape, -1).chunk(chunks, dim=batch_dim),
                chosen.view(*self.shape, -1).chunk(chunks, dim=batch_dim),
                strict=True,
            )
            losses = [load_balancing_loss(part.flatten(0, -2), choice.flatten(0, -2)) for part, choice in parts]
            self.aux_loss = torch.stack(losses).mean() * ROUTER_AUX_LOSS_COEF * scale
            self.weights = _AddedLoss.apply(self.weights, self.aux_loss)
        # Each token TOP_K times, grouped by expert (stable: in token order within an expert).
        self.order = chosen.flatten().argsort(stable=True)
        self.inverse = self.order.argsort()
        self.counts = torch.bincount(chosen.flatten(), minlength=EXPERTS)  # this rank's tokens per expert
        self.local_counts = self.counts.tolist()  # tokens per expert as the experts see them (no dispatch)

    def dense_weights(self) -> torch.Tensor:
        """[tokens, EXPERTS]: each token's weight for every expert, zero for those not chosen."""
        return self.weights.new_zeros((self.chosen.shape[0], EXPERTS)).scatter(1, self.chosen, self.weights)

    def exchange_counts(self, group: dist.ProcessGroup) -> None:
        """Tells every member of the group how many tokens it gets from this rank for each of its
        local experts, and learns the same of every member: the split sizes of the dispatch."""
        received = torch.empty_like(self.counts)
        dist.all_to_all_single(received, self.counts, group=group)  # part of the dispatch (traced there)
        per_member = received.view(EP, LOCAL_EXPERTS)
        self.sent = self.counts.view(EP, LOCAL_EXPERTS).sum(dim=1).tolist()  # tokens to each member
        self.received = per_member.sum(dim=1).tolist()  # tokens from each member
        self.local_counts = per_member.sum(dim=0).tolist()
        # What arrives is member by member, each member's tokens by expert; the experts read them
        # expert by expert: `by_expert` reorders them, `by_member` puts them back.
        experts = torch.arange(LOCAL_EXPERTS, device=received.device).repeat(EP)
        self.by_expert = experts.repeat_interleave(per_member.flatten()).argsort(stable=True)
        self.by_member = self.by_expert.argsort()


def route(logits: torch.Tensor, chunks: int = 1, scale: float = 1.0, batch_dim: int = 0) -> Routing:
    """The routing of a microbatch's tokens (Reference: of `chunks` microbatches at once, parts
    along `batch_dim`); with an auxiliary loss, its weight in the step's loss is `scale` times
    ROUTER_AUX_LOSS_COEF."""
    return Routing(logits, chunks, scale, batch_dim)


def load_balancing_loss(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss of one layer's routing, as transformers'
    `load_balancing_loss_func` computes it: EXPERTS × Σ_e f_e × P_e, with f_e the top-k choices of
    expert e per token and P_e its mean router probability."""
    share = torch.bincount(chosen.flatten(), minlength=EXPERTS).float() / chosen.shape[0]
    return EXPERTS * (share * torch.softmax(logits, dim=-1).mean(dim=0)).sum()


class _AddedLoss(torch.autograd.Function):
    """Forward: `x` as it is. Backward: also the gradient of `loss`, as if it were added to the
    step's loss (Megatron's MoEAuxLossAutoScaler): each stage adds its layers' auxiliary loss
    without sending it anywhere."""

    @staticmethod
    def forward(ctx, x, loss):
        ctx.like = (loss.dtype, loss.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        dtype, device = ctx.like
        return grad, torch.ones((), dtype=dtype, device=device)


def permute(x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Each token TOP_K times, grouped by expert: [tokens x TOP_K, features]."""
    return x.flatten(0, -2)[routing.order // TOP_K]


def unpermute(results: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Each token's TOP_K results back in its place, summed weighted by the router: [..., features]."""
    per_token = results[routing.inverse].view(-1, TOP_K, results.shape[-1])
    return torch.bmm(routing.weights.unsqueeze(1), per_token).view(*routing.shape, results.shape[-1])


def every_expert(x: torch.Tensor) -> torch.Tensor:
    """Reference: every token to every expert, [EXPERTS, tokens, features] (no copy)."""
    tokens = x.flatten(0, -2)
    return tokens.expand(EXPERTS, *tokens.shape)


def weighted_sum(results: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Reference: every expert's result on every token, summed weighted by the router (zero for
    the experts a token was not routed to)."""
    summed = torch.einsum("eth,te->th", results, routing.dense_weights())
    return summed.view(*routing.shape, results.shape[-1])


def _route_tokens(
    op: str, tokens: torch.Tensor, send: list[int], receive: list[int], group: dist.ProcessGroup
) -> torch.Tensor:
    """One AllToAll of rows: `send[m]` rows to member m, `receive[m]` from it, in member order."""
    _record(op, tokens, group, split_sizes=(send, receive))
    arrived = tokens.new_empty((sum(receive), *tokens.shape[1:]))
    dist.all_to_all_single(arrived, tokens.contiguous(), receive, send, group=group)
    return arrived


def _dispatch(tokens: torch.Tensor, routing: Routing, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's tokens to their experts' members; the local experts' tokens, expert by expert."""
    return _route_tokens("dispatch", tokens, routing.sent, routing.received, group)[routing.by_expert]


def _combine(results: torch.Tensor, routing: Routing, group: dist.ProcessGroup) -> torch.Tensor:
    """The local experts' results back to the members their tokens came from, in permute's order."""
    return _route_tokens("combine", results[routing.by_member], routing.received, routing.sent, group)


class _Dispatch(torch.autograd.Function):
    """Forward: the token dispatch (counts first, then the tokens). Backward: the combine of the gradient."""

    @staticmethod
    def forward(ctx, tokens, routing, group):
        ctx.routing, ctx.group = routing, group
        routing.exchange_counts(group)
        return _dispatch(tokens, routing, group)

    @staticmethod
    def backward(ctx, grad):
        return _combine(grad, ctx.routing, ctx.group), None, None


def dispatch(tokens: torch.Tensor, routing: Routing, group: dist.ProcessGroup) -> torch.Tensor:
    return _Dispatch.apply(tokens, routing, group)


class _Combine(torch.autograd.Function):
    """Forward: the token combine. Backward: the dispatch of the gradient (the same split sizes)."""

    @staticmethod
    def forward(ctx, results, routing, group):
        ctx.routing, ctx.group = routing, group
        return _combine(results, routing, group)

    @staticmethod
    def backward(ctx, grad):
        return _dispatch(grad, ctx.routing, ctx.group), None, None


def combine(results: torch.Tensor, routing: Routing, group: dist.ProcessGroup) -> torch.Tensor:
    return _Combine.apply(results, routing, group)


class ExpertLinear(nn.Module):
    """The local experts' linears: one [out, in] weight per expert (this rank's rows or columns of
    it under tensor parallelism, `split`), each applied to its own tokens, which arrive grouped
    by expert; a loop over the local experts, never over tokens."""

    def __init__(self, in_features: int, out_features: int, split: str = "replicated") -> None:
        super().__init__()
        out_features //= TP if split == "rows" else 1
        in_features //= TP if split == "columns" else 1
        self.weight = nn.Parameter(torch.empty(LOCAL_EXPERTS, out_features, in_features))

    def forward(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        parts = tokens.split(routing.local_counts)
        return torch.cat([F.linear(part, weight) for part, weight in zip(parts, self.weight, strict=True)])


class ReferenceExperts(nn.Module):
    """Reference: every expert's [out, in] weight, applied to every token."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(EXPERTS, out_features, in_features))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.matmul(tokens, self.weight.transpose(1, 2))
