"""A replica's batch, its microbatches, and the loss of one microbatch."""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.seeds import generator
from par.codegen.pytorch.runtime.spec import BATCH, DP, DTYPE, HIDDEN, MICROBATCHES, SEQ, SEQUENCE_PARALLEL, TP

# -- Training step ------------------------------------------------------------------------------


def make_batch(dp_rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one data-parallel replica, [BATCH // DP, SEQ, HIDDEN] each."""
    random = generator(seed, "batch", dp_rank)
    shape = (BATCH // DP, SEQ, HIDDEN)
    return torch.randn(shape, generator=random), torch.randn(shape, generator=random)


def microbatches(batch: torch.Tensor, groups: Groups, device: torch.device) -> list[torch.Tensor]:
    """A replica's batch cut into microbatches."""
    parts = batch.to(device=device, dtype=DTYPE).chunk(MICROBATCHES)
    if SEQUENCE_PARALLEL:
        # Each rank keeps its part of the sequence: the DAG's `input_slice_gpu<rank>` nodes, the
        # residual stream is S(seq).
        return [part.chunk(TP, dim=1)[groups.tp_rank].contiguous() for part in parts]
    else:
        return list(parts)


def microbatch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over this rank's part of one microbatch, divided by the size of the replica's batch.

    Summed over tensor-parallel ranks (under sequence parallelism) and microbatches it is the
    replica's mean squared error; averaged over replicas, that of the whole batch, which is what
    Reference's loss is. Computed in fp32: in fp16 the sum of squares overflows.
    """
    return (output.float() - target.float()).square().sum() / (BATCH // DP * SEQ * HIDDEN)
