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
)

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
        self.flat = torch.zeros(sum(param.numel() for _, param in named), dtype=GRAD_DTYPE, device=first.device)
        parts = self.flat.split([param.numel() for _, param in named])
        views = {name: part.view_as(param) for (name, param), part in zip(named, parts, strict=True)}
        if TIED and PP > 1:
            self.views = views
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
        if MIXED_PRECISION and not FP32_GRADIENTS:
            self.main = torch.zeros_like(self.flat, dtype=torch.float32)
            parts = self.main.split([param.numel() for _, param in named])
            self.main_views = {name: part.view_as(param) for (name, param), part in zip(named, parts, strict=True)}

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
            if EP > 1:
                # Each expert's tokens came from the EP replicas of its group: its gradient already
                # sums theirs, and the ranks holding the same experts (one per group) add the rest.
                _all_reduce(self.flat[: self.dense], groups.dp)
                if DP > EP:
                    _all_reduce(self.flat[self.dense :], groups.expert_dp)
            else:
                _all_reduce(self.flat, groups.dp)
        if MIXED_PRECISION and not FP32_GRADIENTS:
            self.main.copy_(self.flat)


def train_step(
    schedule: PipelineSchedule, buffer: GradientBuffer, groups: Groups, data: tuple[list, list]
) -> tuple[list, list]:
    """Forward and backward of every microbatch (`data`: this rank's inputs, targets), then the gradient reduction."""
    outputs, losses = schedule.step(*data)
    buffer.reduce(groups)
    return outputs, losses
