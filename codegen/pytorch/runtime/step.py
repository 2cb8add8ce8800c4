"""One training step: every microbatch through the schedule, then the gradient reduction."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from par.codegen.pytorch.runtime.collectives import _all_reduce
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.pipeline import PipelineSchedule
from par.codegen.pytorch.runtime.spec import DP, PARTIAL_GRADIENTS


def _all_reduce_flat(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """One AllReduce for many tensors, through one flat buffer."""
    flat = _all_reduce(torch.cat([tensor.reshape(-1) for tensor in tensors]), group)
    for tensor, part in zip(tensors, flat.split([tensor.numel() for tensor in tensors]), strict=True):
        tensor.copy_(part.view_as(tensor))


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    """The gradient of every parameter of `module` that has one, by name."""
    return {name: param.grad for name, param in module.named_parameters() if param.grad is not None}


def reduce_gradients(stage: Stage, groups: Groups) -> None:
    """After the last microbatch: make every gradient what Reference's would be (sliced)."""
    if PARTIAL_GRADIENTS:
        partial = [grad for name, grad in gradients(stage).items() if name.split(".", 2)[2] in PARTIAL_GRADIENTS]
        _all_reduce_flat(partial, groups.tp)
    if DP > 1:
        grads = list(gradients(stage).values())
        for grad in grads:
            grad.div_(DP)
        _all_reduce_flat(grads, groups.dp)  # the mean over replicas


def train_step(schedule: PipelineSchedule, groups: Groups, data: tuple[list, list]) -> tuple[list, list]:
    """Forward and backward of every microbatch (`data`: this rank's inputs, targets), then the gradient reduction."""
    outputs, losses = schedule.step(*data)
    reduce_gradients(schedule.stage, groups)
    return outputs, losses
