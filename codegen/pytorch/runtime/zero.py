"""ZeRO's parts (docs/pytorch.md, ZeRO): how a stage's training state is cut among the ranks that
add up the same gradients.

A stage's parameters fall in one or two regions, each sharded over its own gradient group: all
of them over dp x cp (`Groups.dp`), or with expert parallelism the dense ones over that group and
the local experts' over the ranks holding the same experts (`Groups.expert_dp`). A region lies
in the gradient buffer as one run of its parameters, in the buffer's order. zero 1 pads the run
to a multiple of the group's size and each rank keeps one slice of it; zero 2 pads each
parameter, and each rank keeps one slice of every parameter of the region.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from par.codegen.pytorch.runtime.collectives import _all_gather, _reduce_scatter
from par.codegen.pytorch.runtime.groups import SHARDS, Groups, coordinates, shard_index
from par.codegen.pytorch.runtime.spec import DP, EP, ZERO


class Region:
    """Parameters whose training state one gradient group shards, and where they lie.

    `start` and `length`: the region's run in the gradient buffer of zero 1 (padded, all parts);
    `first` and `part`: this rank's part of it in the reduced gradients, `GradientBuffer.main` (of
    zero 2, the buffer itself)."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], parts: int, index: int, experts: bool = False) -> None:
        # the ranks that add up these gradients, and which of them this rank is
        self.named, self.parts, self.index, self.experts = named, parts, index, experts
        self.sizes = [param.numel() for _, param in named]
        self.padded = [-(-size // self.parts) for size in self.sizes]  # zero 2: each parameter's part
        if ZERO == 1:
            self.part = -(-sum(self.sizes) // self.parts)
        else:
            self.part = sum(self.padded)
        self.length = self.part * self.parts
        self.start = self.first = 0

    def flat_parts(self, flat: torch.Tensor) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
        """zero 1: each parameter of the region, by name, with its part of the region's run in
        `flat`, a tensor laid out as the gradient buffer (the gradients or the parameters)."""
        parts = flat[self.start : self.start + sum(self.sizes)].split(self.sizes)
        return [(name, param, part) for (name, param), part in zip(self.named, parts, strict=True)]

    def mine(self) -> slice:
        """zero 1: where this rank's part of the region lies in the flat parameters or gradients."""
        first = self.start + self.index * self.part
        return slice(first, first + self.part)

    def group(self, groups: Groups) -> dist.ProcessGroup:
        """The ranks adding up the region's gradients (called where there are two or more).

        Written on the constants first so that model.py without an expert group does not name it."""
        if EP > 1 and DP > EP and self.experts:
            return groups.expert_dp
        return groups.dp


def regions(named: list[tuple[str, nn.Parameter]], experts: int) -> list[Region]:
    """The regions of a stage's parameters in buffer order, whose last `experts` are the local
    experts'; a region without parameters is left out."""
    rank = dist.get_rank()
    dense = len(named) - experts
    found = [Region(named[:dense], SHARDS, shard_index(rank))] if dense else []
    if EP > 1 and experts:
        found.append(Region(named[dense:], DP // EP, coordinates(rank)[0] // EP, experts=True))
    start = first = 0
    for region in found:
        region.start, region.first = start, first
        start, first = start + region.length, first + region.part
    return found


def reduce_parts(regions: list[Region], flat: torch.Tensor, main: torch.Tensor, groups: Groups) -> None:
    """zero 1, after the last microbatch: each region's run of the buffer ReduceScattered over its
    group, this rank's part of the sum into `main` (fp32)."""
    for region in regions:
        run = flat[region.start : region.start + region.length]
        part = main[region.first : region.first + region.part]
        part.copy_(_reduce_scatter(run, 0, region.group(groups)) if region.parts > 1 else run)


class ScatterGradient:
    """zero 2: a parameter's hook: ReduceScatters its gradient of one microbatch over its region's
    group in GRAD_DTYPE, adds this rank's part to `into` (fp32), and frees it."""

    def __init__(self, region: Region, into: torch.Tensor, gradient_dtype: torch.dtype) -> None:
        self.region, self.into, self.dtype = region, into, gradient_dtype
        self.groups: Groups  # given by train_step before the first backward

    def __call__(self, param: torch.Tensor) -> None:
        assert param.grad is not None  # the hook runs right after autograd has set it
        grad = param.grad.reshape(-1).to(self.dtype)
        parts = self.region.parts
        if parts > 1:
            padded = torch.cat([grad, grad.new_zeros(self.into.numel() * parts - grad.numel())])
            self.into.add_(_reduce_scatter(padded, 0, self.region.group(self.groups)))
        else:
            self.into.add_(grad)
        param.grad = None


def part_of(regions: list[Region], full: dict[str, torch.Tensor]) -> torch.Tensor:
    """This rank's part of the tensors `full` (by name), in fp32, laid out as `GradientBuffer.main`:
    of each region's run (zero 1), or of each of its parameters (zero 2)."""
    parts = []
    for region in regions:
        if ZERO == 2:
            for (name, _), size in zip(region.named, region.padded, strict=True):
                flat = full[name].reshape(-1).float()
                padded = torch.cat([flat, flat.new_zeros(size * region.parts - flat.numel())])
                parts.append(padded[region.index * size : (region.index + 1) * size])
        else:
            flat = torch.cat([full[name].reshape(-1).float() for name, _ in region.named])
            flat = torch.cat([flat, flat.new_zeros(region.length - flat.numel())])
            parts.append(flat[region.index * region.part : (region.index + 1) * region.part])
    return torch.cat(parts)


def gather_parts(regions: list[Region], parts: torch.Tensor, groups: Groups) -> None:
    """zero 2, after the step: every rank's parts of each region's weights gathered over its group
    (rank after rank, each in the buffer's layout) and written back into each parameter."""
    for region in regions:
        part = parts[region.first : region.first + region.part]
        gathered = _all_gather(part, 0, region.group(groups)) if region.parts > 1 else part
        rows = gathered.view(region.parts, -1)  # rank r's parts
        first = 0
        for (_, param), size in zip(region.named, region.padded, strict=True):
            param.copy_(rows[:, first : first + size].reshape(-1)[: param.numel()].view_as(param))
            first += size
