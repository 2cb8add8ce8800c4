"""The forward/backward pairs: torch.autograd.Functions after Megatron's mappings.

The compiler chooses the pair of every collective and slice (`par.dsl.lowering.backward`);
model.py holds only the pairs its layer calls.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.collectives import _all_gather, _all_reduce, _all_to_all, _reduce_scatter
from par.codegen.pytorch.runtime.regather import remember_gathered

# -- Forward/backward pairs (Megatron's mappings) -----------------------------------------------
# Placements on the tensor-parallel group: R replicated, P partial sum, S(dim) split along dim
# (1 = seq, 2 = features). The gradient of an R tensor is whole on every rank, that of a P
# tensor is whole too, that of an S(dim) tensor is split the same way.


class _AllReduce(torch.autograd.Function):
    """Forward: AllReduce, P -> R, in place (the partial sum has no other use). Backward: identity."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.mark_dirty(x)  # autograd refuses the step if anything saved the partial sum
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def all_reduce(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _AllReduce.apply(x, group)


class _CopyToTP(torch.autograd.Function):
    """Forward: identity, an R tensor entering column-parallel linears. Backward: AllReduce of the partial gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        # in place, as Megatron does: the gradient of a column-parallel linear's input is its own
        return _all_reduce(grad.contiguous(), ctx.group), None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


class _AllGather(torch.autograd.Function):
    """Forward: AllGather, S(dim) -> R. Backward: this rank's part of the gradient, nothing sent.

    Right where the gradient is whole on every rank, and where the compiler proved it zero
    outside each rank's part (each rank's uses read only its own part): there this rank's part
    is what the ReduceScatter of `all_gather_to_tp` would give.
    """

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        part = grad.chunk(dist.get_world_size(ctx.group), dim=ctx.dim)[dist.get_rank(ctx.group)]
        return part.contiguous(), None, None


def all_gather(x: torch.Tensor, *, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    return _AllGather.apply(x, dim, group)


class _AllGatherToTP(torch.autograd.Function):
    """Forward: AllGather, S(dim) -> R. Backward: ReduceScatter.

    Every use of the gathered tensor ends, directly or through replicated ops without
    parameters, in a tensor-parallel op (a column-parallel linear, a slice), so its gradient
    arrives as a partial sum: the backward sums it and keeps this rank's part in one step.
    """

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.dim, ctx.group), None, None


def all_gather_to_tp(x: torch.Tensor, *, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    whole = _AllGatherToTP.apply(x, dim, group)
    remember_gathered(whole, x, dim, group)
    return whole


class _ReduceScatter(torch.autograd.Function):
    """Forward: ReduceScatter, P -> S(dim). Backward: AllGather."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


def reduce_scatter(x: torch.Tensor, *, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    return _ReduceScatter.apply(x, dim, group)


class _AllToAll(torch.autograd.Function):
    """Forward: AllToAll, S(gather_dim) -> S(scatter_dim). Backward: the AllToAll back."""

    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, *, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    return _AllToAll.apply(x, scatter_dim, gather_dim, group)


class _ScatterToTP(torch.autograd.Function):
    """Forward: this rank's part along dim, R -> S(dim), no communication. Backward: AllGather."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].contiguous()

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


def scatter_to_tp(x: torch.Tensor, *, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    return _ScatterToTP.apply(x, dim, group)
