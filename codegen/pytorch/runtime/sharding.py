"""Sharding a full state dict: the parameters each rank holds, sliced by the SHARDING table."""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.groups import Groups, coordinates
from par.codegen.pytorch.runtime.model import SHARDING, Stage
from par.codegen.pytorch.runtime.ops import group_heads
from par.codegen.pytorch.runtime.spec import BY_HEAD, DTYPE, STAGES, TP


def shard_parameter(tensor: torch.Tensor, split: str, tp_rank: int) -> torch.Tensor:
    if split == "replicated":
        return tensor
    dim = 0 if split.startswith("rows") else 1
    if BY_HEAD and split.endswith("by head"):
        tensor = group_heads(tensor, dim)
    return tensor.chunk(TP, dim=dim)[tp_rank]


def shard_state_dict(full: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The parameters `rank` holds, sliced from a full (unsharded) state dict such as Reference's.

    Only the layers of the rank's stage are read, so `full` may hold just those.
    """
    _, stage, tp_rank = coordinates(rank)
    first, last = STAGES[stage]
    return {
        f"layers.{layer}.{name}": shard_parameter(full[f"layers.{layer}.{name}"], split, tp_rank)
        for layer in range(first, last + 1)
        for name, split in SHARDING.items()
    }


def parameter_names(rank: int) -> list[str]:
    """The names of the parameters `rank` holds, in the order shard_state_dict gives them."""
    _, stage, _ = coordinates(rank)
    first, last = STAGES[stage]
    return [f"layers.{layer}.{name}" for layer in range(first, last + 1) for name in SHARDING]


def build_stage(groups: Groups, device: torch.device, full: dict[str, torch.Tensor]) -> Stage:
    stage = Stage(groups).to(device=device, dtype=DTYPE)
    stage.load_state_dict(shard_state_dict(full, groups.rank))
    return stage
