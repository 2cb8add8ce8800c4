"""The collectives: every one the model issues goes through these functions, so the trace sees it."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.trace import _record, set_phase

# -- Collectives: every one the model issues goes through these functions -----------------------


def _all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sums `tensor` over `group`, in place."""
    _record("allreduce", tensor, group)
    dist.all_reduce(tensor, group=group)
    return tensor


def _all_gather(tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """The parts of all ranks of `group`, concatenated along `dim` in rank order."""
    _record("allgather", tensor, group)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _reduce_scatter(tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's part along `dim` of the sum of `tensor` over `group`."""
    _record("reducescatter", tensor, group)
    parts = [part.contiguous() for part in tensor.chunk(dist.get_world_size(group), dim=dim)]
    output = torch.empty_like(parts[0])
    dist.reduce_scatter(output, parts, group=group)
    return output


def _all_to_all(tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Split along `scatter_dim`, one part to each rank; what arrives is concatenated along `gather_dim`."""
    _record("alltoall", tensor, group)
    inputs = [part.contiguous() for part in tensor.chunk(dist.get_world_size(group), dim=scatter_dim)]
    outputs = [torch.empty_like(part) for part in inputs]
    dist.all_to_all(outputs, inputs, group=group)
    return torch.cat(outputs, dim=gather_dim)


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
