"""The collectives: every one the model issues goes through these functions, so the trace sees it."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.trace import _record, set_phase

# -- Collectives: every one the model issues goes through these functions -----------------------


def _all_reduce(
    tensor: torch.Tensor, group: dist.ProcessGroup, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> torch.Tensor:
    """Sums `tensor` over `group` (or takes the `op` of the ranks' values), in place."""
    _record("allreduce", tensor, group)
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def _all_gather(tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """The parts of all ranks of `group`, concatenated along `dim` in rank order.

    Gathered into one buffer, the parts one after another, then viewed as the concatenation: no copy when
    every dimension before `dim` has size 1 (dim 0, or the sequence of a one-sample
    microbatch), else one.
    """
    _record("allgather", tensor, group)
    ranks = dist.get_world_size(group)
    gathered = tensor.new_empty((ranks * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_single(gathered, tensor.contiguous(), group=group)
    return gathered.unflatten(0, (ranks, -1)).movedim(0, dim).flatten(dim, dim + 1)


def _rank_major(tensor: torch.Tensor, dim: int, ranks: int) -> torch.Tensor:
    """`tensor` cut into `ranks` parts along `dim`, the parts stacked along a new first dimension."""
    return tensor.unflatten(dim, (ranks, -1)).movedim(dim, 0).contiguous()


def _reduce_scatter(tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's part along `dim` of the sum of `tensor` over `group`.

    No copy before the collective when every dimension before `dim` has size 1, else one.
    """
    _record("reducescatter", tensor, group)
    parts = _rank_major(tensor, dim, dist.get_world_size(group))
    output = parts.new_empty(parts.shape[1:])
    dist.reduce_scatter_single(output, parts.flatten(0, 1), group=group)
    return output


def _all_to_all(tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Split along `scatter_dim`, one part to each rank; what arrives is concatenated along `gather_dim`."""
    _record("alltoall", tensor, group)
    parts = _rank_major(tensor, scatter_dim, dist.get_world_size(group))
    arrived = torch.empty_like(parts)
    dist.all_to_all_single(arrived, parts, group=group)
    return arrived.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


def _exchange(messages: list[tuple[str, torch.Tensor, int, str, int]]) -> None:
    """Posts every (op, tensor, peer, phase, microbatch) of `messages` at once, then waits for all.

    op is "send" or "recv"; the trace records each under its own phase and microbatch.
    """
    operations = []
    for op, tensor, peer, phase, microbatch in messages:
        set_phase(phase, microbatch)
        _record(op, tensor, peer=peer)
        operations.append(dist.P2POp(dist.isend if op == "send" else dist.irecv, tensor.contiguous(), peer))
    for work in dist.batch_isend_irecv(operations):
        work.wait()
