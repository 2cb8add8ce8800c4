"""The tensor-parallel linears: each rank holds its slice of the full [out, in] weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from par.codegen.pytorch.runtime.spec import TP

# -- Tensor-parallel linears --------------------------------------------------------------------
# Weights start empty: they are always loaded, sliced from a full state dict (shard_state_dict).


class ColumnParallelLinear(nn.Module):
    """x @ W.T for this rank's rows of the full [out_features, in_features] weight: R -> S(-1)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features // TP, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RowParallelLinear(nn.Module):
    """x @ W.T for this rank's columns of the full [out_features, in_features] weight: S(-1) -> P."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features // TP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)
