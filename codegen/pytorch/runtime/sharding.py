"""Sharding a full state dict: the parameters each rank holds, sliced by the SHARDING table."""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.groups import Groups, coordinates
from par.codegen.pytorch.runtime.model import BLOCK_SHARDING, END_SHARDING, SHARDING, Stage, block_of
from par.codegen.pytorch.runtime.ops import group_heads
from par.codegen.pytorch.runtime.spec import (
    BLOCKWISE,
    BY_HEAD,
    DTYPE,
    ENDS,
    EP,
    MOE,
    PADDED,
    PADDED_VOCAB,
    PP,
    SCHEDULE,
    STAGES,
    TIED,
    TP,
)

# The split of parameters whose rows are the vocabulary, padded to a multiple of TP: the padding
# rows are zero here, when loading a checkpoint, and dropped when saving one.
VOCABULARY = "rows of the vocabulary"


# The split of the experts' weights, [experts, out, in]: the local experts of the rank's place
# in its expert-parallel group, then (after ", ") their rows or columns as a dense linear's.
EXPERTS_SPLIT = "experts"


def shard_parameter(tensor: torch.Tensor, split: str, tp_rank: int, ep_rank: int = 0) -> torch.Tensor:
    if MOE and split.startswith(EXPERTS_SPLIT):
        tensor = tensor.chunk(EP, dim=0)[ep_rank]
        if split == EXPERTS_SPLIT:
            return tensor
        return tensor.chunk(TP, dim=1 if split.endswith("rows") else 2)[tp_rank]
    if split == "replicated":
        return tensor
    if PADDED and split == VOCABULARY:  # padding rows: zero, never looked up, masked in the loss
        tensor = torch.cat([tensor, tensor.new_zeros((PADDED_VOCAB - tensor.shape[0], *tensor.shape[1:]))])
    dim = 0 if split.startswith("rows") else 1
    if BY_HEAD and split.endswith("by head"):
        tensor = group_heads(tensor, dim)
    return tensor.chunk(TP, dim=dim)[tp_rank]


def shard_state_dict(full: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The parameters `rank` holds, sliced from a full (unsharded) state dict such as Reference's.

    Only the layers of the rank's stage are read, so `full` may hold just those.
    """
    dp_rank, stage, tp_rank = coordinates(rank)
    ep_rank = 0  # the rank's place in its expert-parallel group
    if EP > 1:
        ep_rank = dp_rank % EP
    return {name: shard_parameter(full[name], split, tp_rank, ep_rank) for name, split in stage_sharding(stage).items()}


def stage_sharding(stage: int) -> dict[str, str]:
    """How each parameter of `stage` splits over its tensor-parallel ranks, by name."""
    first, last = STAGES[stage]
    layers = {
        f"layers.{layer}.{name}": split
        for layer in range(first, last + 1)
        for name, split in layer_sharding(layer).items()
    }
    if SCHEDULE == "interleaved":  # STAGES lists model chunks: the stage's first, then its later ones
        for first, last in STAGES[stage + PP :: PP]:
            layers |= {
                f"layers.{layer}.{name}": split
                for layer in range(first, last + 1)
                for name, split in layer_sharding(layer).items()
            }
    if ENDS:
        return (
            {name: END_SHARDING[name] for name in ends_of(stage, before=True)}
            | layers
            | {name: END_SHARDING[name] for name in ends_of(stage, before=False)}
        )
    else:
        return layers


def layer_sharding(layer: int) -> dict[str, str]:
    """How each parameter of layer `layer` splits: SHARDING, or (a block per range of layers) its block's."""
    if BLOCKWISE:
        return BLOCK_SHARDING[block_of(layer)]
    else:
        return SHARDING


def ends_of(stage: int, *, before: bool) -> list[str]:
    """The parameters of the model's ends on `stage`: those before its layers, or after them."""
    if before:
        return [name for name in END_SHARDING if stage == 0 and name.split(".")[0] in ("embed", "pos_embed")]
    names = [name for name in END_SHARDING if stage == PP - 1 and name.split(".")[0] in ("final_norm", "head")]
    if TIED and PP > 1 and stage == PP - 1:
        names.append("embed.weight")  # the head's own copy of the tied matrix
    return names


def parameter_names(rank: int) -> list[str]:
    """The names of the parameters `rank` holds, in the order shard_state_dict gives them."""
    _, stage, _ = coordinates(rank)
    return list(stage_sharding(stage))


def build_stage(groups: Groups, device: torch.device, full: dict[str, torch.Tensor]) -> Stage:
    stage = Stage(groups).to(device=device, dtype=DTYPE)
    stage.load_state_dict(shard_state_dict(full, groups.rank))
    return stage
