"""One training step: every microbatch through the schedule, then the gradient reduction, on one flat buffer."""

from __future__ import annotations

import torch
from torch import nn

from par.codegen.pytorch.runtime.collectives import _all_reduce
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.pipeline import PipelineSchedule
from par.codegen.pytorch.runtime.spec import (
    CP,
    DP,
    EP,
    EXPERT_GRADIENTS,
    FP32_GRADIENTS,
    GRAD_DTYPE,
    MIXED_PRECISION,
    PARTIAL_GRADIENTS,
    PP,
    TIED,
    ZERO,
)
from par.codegen.pytorch.runtime.zero import Region, ScatterGradient, reduce_parts, regions

# -- Gradients ----------------------------------------------------------------------------------
# Every gradient of a stage lives in one flat GRAD_DTYPE buffer, allocated once: accumulated
# there over the microbatches and reduced there in place, one AllReduce per group. Parameters
# whose gradients are partial over the tensor-parallel group (PARTIAL_GRADIENTS) come first, so
# that their AllReduce is one slice of the buffer; with expert parallelism the local experts'
# (EXPERT_GRADIENTS) come last, reduced over the ranks holding the same experts.


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    """The gradient of every parameter of `module` that has one, by name."""
    return {name: param.grad for name, param in module.named_parameters() if param.grad is not None}


def partial_gradient(name: str) -> bool:
    """Whether parameter `name` of a stage (`layers.5.ln1.weight`, `final_norm.weight`) is in PARTIAL_GRADIENTS."""
    return (name.split(".", 2)[2] if name.startswith("layers.") else name) in PARTIAL_GRADIENTS


def expert_gradient(name: str) -> bool:
    """Whether parameter `name` of a stage is a local experts' weight (EXPERT_GRADIENTS)."""
    return name.startswith("layers.") and name.split(".", 2)[2] in EXPERT_GRADIENTS


class AddGradient:
    """A parameter's hook: adds its gradient of one microbatch to `into` (fp32), and frees it."""

    def __init__(self, into: torch.Tensor) -> None:
        self.into = into

    def __call__(self, param: torch.Tensor) -> None:
        assert param.grad is not None  # the hook runs right after autograd has set it
        self.into.add_(param.grad)
        param.grad = None


class GradientBuffer:
    """The stage's gradients in one flat buffer of GRAD_DTYPE; `main_views`: each one in fp32, by name."""

    def __init__(self, stage: Stage) -> None:
        named = list(stage.named_parameters())
        if PARTIAL_GRADIENTS:
            named.sort(key=lambda item: not partial_gradient(item[0]))  # partial ones first
            self.partial = sum(param.numel() for name, param in named if partial_gradient(name))
        if EP > 1:
            named.sort(key=lambda item: expert_gradient(item[0]))  # the local experts' last
            self.dense = sum(param.numel() for name, param in named if not expert_gradient(name))
        first = named[0][1]
        if ZERO:
            # the runs of parameters each sharded over its group, in the order the optimizer updates them
            experts = 0
            if EP > 1:
                experts = sum(expert_gradient(name) for name, _ in named)
            self.regions = regions(named, experts)
            self.groups: Groups  # given by train_step
        if ZERO == 1:
            self.flat, views = zero_views(self.regions, first.device)
        if ZERO == 2:
            self.flat, views = zero_parts(self.regions, first.device)
            if PARTIAL_GRADIENTS:  # their parts lie first too
                sizes = [size for region in self.regions for size in region.padded]
                self.partial = sum(size for (name, _), size in zip(named, sizes, strict=True) if partial_gradient(name))
        if not ZERO:
            self.flat = torch.zeros(sum(param.numel() for _, param in named), dtype=GRAD_DTYPE, device=first.device)
            parts = self.flat.split([param.numel() for _, param in named])
            views = {name: part.view_as(param) for (name, param), part in zip(named, parts, strict=True)}
        if TIED and PP > 1:
            self.views = views
        if ZERO == 2:
            # each ReduceScatters its gradients over the region's group, which train_step gives them
            self.hooks = [
                ScatterGradient(region, views[name], GRAD_DTYPE) for region in self.regions for name, _ in region.named
            ]
            for hook, (_, param) in zip(self.hooks, named, strict=True):
                param.register_post_accumulate_grad_hook(hook)
        else:
            if FP32_GRADIENTS:
                # Autograd writes each microbatch's gradient in the parameter's dtype; a hook adds it
                # to the fp32 buffer at once, so accumulation over microbatches is in fp32.
                for name, param in named:
                    param.register_post_accumulate_grad_hook(AddGradient(views[name]))
            else:
                for name, param in named:
                    param.grad = views[name]  # autograd accumulates into it in place
        # The fp32 gradients AdamW reads: the buffer itself, or its fp32 copy when it is fp16/bf16.
        self.main, self.main_views = self.flat, views
        if MIXED_PRECISION and not FP32_GRADIENTS and not ZERO:
            self.main = torch.zeros_like(self.flat, dtype=torch.float32)
            parts = self.main.split([param.numel() for _, param in named])
            self.main_views = {name: part.view_as(param) for (name, param), part in zip(named, parts, strict=True)}
        if ZERO == 1:
            # The sum of this rank's part over its gradient group, in fp32: what its AdamW reads.
            parts = sum(region.part for region in self.regions)
            self.main = torch.zeros(parts, dtype=torch.float32, device=first.device)

    def zero(self) -> None:
        self.flat.zero_()

    def reduce(self, groups: Groups) -> None:
        """After the last microbatch: make every gradient what Reference's would be (sliced), in `main` in fp32."""
        if PARTIAL_GRADIENTS:
            _all_reduce(self.flat[: self.partial], groups.tp)
        if TIED and PP > 1 and groups.stage in (0, PP - 1):
            # The two copies of the tied matrix, on the first and the last stage, add their gradients.
            _all_reduce(self.views["embed.weight"], groups.embedding)
        if DP > 1:
            self.flat.div_(DP)  # the mean over replicas
        if DP * CP > 1:  # and under cp the sum over the parts of the sequence, each rank's loss its tokens' share
            if ZERO == 1:
                reduce_parts(self.regions, self.flat, self.main, groups)
            if not ZERO:
                if EP > 1:
                    # Each expert's tokens came from the EP replicas of its group: its gradient already
                    # sums theirs, and the ranks holding the same experts (one per group) add the rest.
                    _all_reduce(self.flat[: self.dense], groups.dp)
                    if DP > EP:
                        _all_reduce(self.flat[self.dense :], groups.expert_dp)
                else:
                    _all_reduce(self.flat, groups.dp)
        if MIXED_PRECISION and not FP32_GRADIENTS and not ZERO:
            self.main.copy_(self.flat)


def zero_views(regions: list[Region], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """zero 1: the flat gradients, each region's run padded to a multiple of its group's size
    (`Region.length`), and each parameter's view of them. After the last microbatch each run is
    ReduceScattered over its group: each rank keeps the sum of its part (`main`), the part its
    optimizer updates (runtime/optimizer.py)."""
    flat = torch.zeros(sum(region.length for region in regions), dtype=GRAD_DTYPE, device=device)
    views = {}
    for region in regions:
        views.update({name: part.view_as(param) for name, param, part in region.flat_parts(flat)})
    return flat, views


def zero_parts(regions: list[Region], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """zero 2: only this rank's part of each gradient, in fp32: its 1/n of the gradient flattened
    and padded to a multiple of n, the size of its region's group, parts one after another in the
    buffer's order (partial gradients first), and each parameter's part. Each microbatch's gradient
    is ReduceScattered into it as soon as autograd has it (`ScatterGradient`), so no rank keeps a
    whole one."""
    named = [name for region in regions for name, _ in region.named]
    sizes = [size for region in regions for size in region.padded]
    flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
    return flat, dict(zip(named, flat.split(sizes), strict=True))


def train_step(
    schedule: PipelineSchedule, buffer: GradientBuffer, groups: Groups, data: tuple[list, list]
) -> tuple[list, list]:
    """Forward and backward of every microbatch (`data`: this rank's inputs, targets), then the gradient reduction."""
    if ZERO:
        buffer.groups = groups  # ZeRO reduce-scatters the gradients and gathers the weights over its regions' groups
    if ZERO == 2:
        for hook in buffer.hooks:
            hook.groups = groups
    outputs, losses = schedule.step(*data)
    buffer.reduce(groups)
    return outputs, losses
