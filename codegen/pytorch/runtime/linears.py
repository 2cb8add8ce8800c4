"""The tensor-parallel linears: each rank holds its slice of the full [out, in] weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from par.codegen.pytorch.runtime.spec import TP

# -- Tensor-parallel linears --------------------------------------------------------------------
# Weights start empty: they are always loaded, sliced from a full state dict (shard_state_dict).


class ColumnParallelLinear(nn.Module):
    """x @ W.T (+ b) for this rank's rows of the full [out_features, in_features] weight (and
    its part of the bias, split like the output): R -> S(-1)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features // TP, in_features))
        self.bias = nn.Parameter(torch.empty(out_features // TP)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """x @ W.T for this rank's columns of the full [out_features, in_features] weight: S(-1) -> P.

    The output is a partial sum over the group, so only the rank that `adds_bias` (rank 0)
    adds the whole bias: the sum holds it once. Its gradient is whole there and zero on the
    others, and is summed over the group (PARTIAL_GRADIENTS).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, adds_bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features // TP))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.adds_bias = adds_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias if self.adds_bias else None)
