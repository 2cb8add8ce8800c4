"""A replica's batch, its microbatches, and the loss of one microbatch."""

from __future__ import annotations

import os

import torch

from par.codegen.pytorch.runtime.context import context_part
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.seeds import generator
from par.codegen.pytorch.runtime.spec import (
    BATCH,
    CP,
    DP,
    DTYPE,
    ENDS,
    HIDDEN,
    MICROBATCHES,
    PP,
    SEQ,
    SEQUENCE_PARALLEL,
    TP,
    VOCAB,
)
from par.codegen.pytorch.runtime.vocab import vocab_parallel_cross_entropy

# -- Training step ------------------------------------------------------------------------------


def make_microbatch(kind: str, dp_rank: int, microbatch: int, seed: int) -> torch.Tensor:
    """One microbatch of a replica's "inputs" or "targets".

    Token ids [BATCH // DP // MICROBATCHES, SEQ], the targets the ids shifted by one (token t
    predicts token t + 1, the last has no target: -1); or, without a vocabulary, random
    [BATCH // DP // MICROBATCHES, SEQ, HIDDEN]. Each from a random stream of its own, so that a
    rank draws only the microbatches it uses.
    """
    if ENDS:
        ids = torch.randint(
            VOCAB, (BATCH // DP // MICROBATCHES, SEQ), generator=generator(seed, "batch", dp_rank, microbatch)
        )
        if kind == "targets":
            return next_tokens(ids)
        else:
            return ids
    else:
        random = generator(seed, "batch", kind, dp_rank, microbatch)
        return torch.randn((BATCH // DP // MICROBATCHES, SEQ, HIDDEN), generator=random)


def next_tokens(ids: torch.Tensor) -> torch.Tensor:
    """The target of each position: the next token; none (-1) for the last."""
    return torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -1)], dim=1)


def make_batch(dp_rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one data-parallel replica, [BATCH // DP, SEQ, HIDDEN] each: its microbatches in turn."""
    inputs, targets = (
        torch.cat([make_microbatch(kind, dp_rank, i, seed) for i in range(MICROBATCHES)])
        for kind in ("inputs", "targets")
    )
    return inputs, targets


def rank_part(microbatch: torch.Tensor, tp_rank: int, device: torch.device, cp_rank: int = 0) -> torch.Tensor:
    """The part of a microbatch that (`tp_rank`, `cp_rank`) holds, on `device`."""
    if ENDS:
        # token ids, whole on every rank: the embedding splits the sequence (and under cp the
        # first stage takes its part of the ids, the loss its part of the targets)
        return microbatch.to(device=device)
    else:
        microbatch = microbatch.transpose(0, 1)  # the stream is sequence-first, [seq, batch, HIDDEN]
        if CP > 1:
            microbatch = context_part(microbatch, 0, cp_rank)  # the DAG's `input` node: this rank's chunks
        if SEQUENCE_PARALLEL:
            # Each rank keeps its part of the sequence: the DAG's `input_slice_gpu<rank>` nodes, the
            # residual stream is S(seq).
            microbatch = microbatch.chunk(TP, dim=0)[tp_rank]
        return microbatch.contiguous().to(device=device, dtype=DTYPE)


def microbatches(batch: torch.Tensor, tp_rank: int, device: torch.device, cp_rank: int = 0) -> list[torch.Tensor]:
    """A replica's batch cut into microbatches, the part of each that (`tp_rank`, `cp_rank`) holds."""
    return [rank_part(part, tp_rank, device, cp_rank) for part in batch.chunk(MICROBATCHES)]


def rank_data(groups: Groups, seed: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's part of each microbatch of its replica: inputs on the first stage, targets on the last, else none.

    Drawn once, before the steps, and moved to the device then.
    """
    inputs, targets = (
        [
            rank_part(make_microbatch(kind, groups.dp_rank, i, seed), groups.tp_rank, device, groups.cp_rank)
            for i in range(MICROBATCHES)
        ]
        if needed
        else []
        for kind, needed in (("inputs", groups.stage == 0), ("targets", groups.stage == PP - 1))
    )
    return inputs, targets


def microbatch_loss(stage: Stage, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of one microbatch, as a part of the replica's mean.

    With a vocabulary: the cross-entropy of this rank's logits, computed vocabulary-parallel,
    summed over the tokens with a target and divided by their number in the replica's batch
    (each microbatch has as many): summed over microbatches it is the replica's mean, averaged
    over replicas that of the whole batch, which is what Reference's loss is. Without one: the
    squared error over this rank's part of the microbatch, divided by the size of the replica's
    batch (summed over tensor-parallel ranks under sequence parallelism). Computed in fp32.
    """
    if ENDS:
        if CP > 1:  # this rank's part of the targets; the count is the whole sequence's
            losses = vocab_parallel_cross_entropy(output, context_part(target, 1, stage.groups.cp_rank), stage.groups)
        else:
            losses = vocab_parallel_cross_entropy(output, target, stage.groups)
        return losses.sum() / ((target >= 0).sum() * MICROBATCHES)
    else:
        return (output.float() - target.float()).square().sum() / (BATCH // DP * SEQ * HIDDEN)


# -- Token files (--data) -----------------------------------------------------------------------
TOKEN_DTYPES = {"uint16": torch.uint16, "int32": torch.int32}


def open_tokens(path: str, dtype: str) -> torch.Tensor:
    """A token file, memory-mapped: a flat array of ids of `dtype` (uint16 or int32), never copied whole."""
    kind = TOKEN_DTYPES[dtype]
    count = os.path.getsize(path) // kind.itemsize
    if count < SEQ + 1:
        raise ValueError(f"--data {path}: {count} tokens, fewer than one window of seq + 1 = {SEQ + 1}")
    return torch.from_file(path, shared=False, size=count, dtype=kind)


def file_data(tokens: torch.Tensor, step: int, groups: Groups, device: torch.device) -> tuple[list, list]:
    """This rank's microbatches of training step `step` from a token file.

    The file is cut into windows of SEQ + 1 tokens, BATCH of them per step, in order (around
    again at the end): inputs are a window's first SEQ tokens, targets its last SEQ. The first
    stage reads the inputs, the last the targets.
    """
    windows = tokens.numel() // (SEQ + 1)
    per = BATCH // DP // MICROBATCHES
    inputs, targets = [], []
    for microbatch in range(MICROBATCHES):
        first = step * BATCH + groups.dp_rank * (BATCH // DP) + microbatch * per
        rows = [(first + row) % windows * (SEQ + 1) for row in range(per)]
        ids = torch.stack([tokens[start : start + SEQ + 1].to(torch.int64) for start in rows])
        if int(ids.max()) >= VOCAB:
            raise ValueError(f"--data: token id {int(ids.max())} is not below vocab {VOCAB}")
        if groups.stage == 0:
            inputs.append(ids[:, :-1].to(device))
        if groups.stage == PP - 1:
            targets.append(ids[:, 1:].to(device))
    return inputs, targets
