"""A replica's batch, its microbatches, and the loss of one microbatch."""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.seeds import generator
from par.codegen.pytorch.runtime.spec import BATCH, DP, DTYPE, HIDDEN, MICROBATCHES, PP, SEQ, SEQUENCE_PARALLEL, TP

# -- Training step ------------------------------------------------------------------------------


def make_microbatch(kind: str, dp_rank: int, microbatch: int, seed: int) -> torch.Tensor:
    """One microbatch of a replica's "inputs" or "targets", [BATCH // DP // MICROBATCHES, SEQ, HIDDEN].

    Each from a random stream of its own, so that a rank draws only the microbatches it uses.
    """
    random = generator(seed, "batch", kind, dp_rank, microbatch)
    return torch.randn((BATCH // DP // MICROBATCHES, SEQ, HIDDEN), generator=random)


def make_batch(dp_rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one data-parallel replica, [BATCH // DP, SEQ, HIDDEN] each: its microbatches in turn."""
    inputs, targets = (
        torch.cat([make_microbatch(kind, dp_rank, i, seed) for i in range(MICROBATCHES)])
        for kind in ("inputs", "targets")
    )
    return inputs, targets


def rank_part(microbatch: torch.Tensor, tp_rank: int, device: torch.device) -> torch.Tensor:
    """The part of a microbatch that tensor-parallel rank `tp_rank` holds, on `device`."""
    if SEQUENCE_PARALLEL:
        # Each rank keeps its part of the sequence: the DAG's `input_slice_gpu<rank>` nodes, the
        # residual stream is S(seq).
        microbatch = microbatch.chunk(TP, dim=1)[tp_rank].contiguous()
    return microbatch.to(device=device, dtype=DTYPE)


def microbatches(batch: torch.Tensor, tp_rank: int, device: torch.device) -> list[torch.Tensor]:
    """A replica's batch cut into microbatches, tensor-parallel rank `tp_rank`'s part of each."""
    return [rank_part(part, tp_rank, device) for part in batch.chunk(MICROBATCHES)]


def rank_data(groups: Groups, seed: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's part of each microbatch of its replica: inputs on the first stage, targets on the last, else none.

    Drawn once, before the steps, and moved to the device then.
    """
    inputs, targets = (
        [rank_part(make_microbatch(kind, groups.dp_rank, i, seed), groups.tp_rank, device) for i in range(MICROBATCHES)]
        if needed
        else []
        for kind, needed in (("inputs", groups.stage == 0), ("targets", groups.stage == PP - 1))
    )
    return inputs, targets


def microbatch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over this rank's part of one microbatch, divided by the size of the replica's batch.

    Summed over tensor-parallel ranks (under sequence parallelism) and microbatches it is the
    replica's mean squared error; averaged over replicas, that of the whole batch, which is what
    Reference's loss is. Computed in fp32: in fp16 the sum of squares overflows.
    """
    return (output.float() - target.float()).square().sum() / (BATCH // DP * SEQ * HIDDEN)
