"""The training step of a deployment with one pipeline stage: microbatches in turn."""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.batches import microbatch_loss
from par.codegen.pytorch.runtime.groups import Groups
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.regather import stage_forward
from par.codegen.pytorch.runtime.spec import ENDS, LOSS_SCALING, TP
from par.codegen.pytorch.runtime.trace import set_phase


class PipelineSchedule:
    """One training step: each of MICROBATCHES microbatches forward and backward in turn.

    One pipeline stage, so there is nothing to overlap: gradients simply accumulate.
    """

    def __init__(self, stage: Stage, groups: Groups, device: torch.device) -> None:
        self.stage = stage
        if LOSS_SCALING:
            self.loss_scale = 1.0  # fp16: backward runs on the loss times this (set by each step)

    def step(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[list, list]:
        """Runs every microbatch; returns the outputs and losses."""
        outputs: list[torch.Tensor] = []  # none with a vocabulary: the losses are the outputs
        losses: list[torch.Tensor] = []
        for microbatch, (x, target) in enumerate(zip(inputs, targets, strict=True)):
            set_phase("forward", microbatch)
            if TP > 1:  # noqa: SIM108 - a statement, so the inliner folds it per spec
                y = stage_forward(self.stage, x)
            else:
                y = self.stage(x)
            loss = microbatch_loss(self.stage, y, target)
            set_phase("backward", microbatch)
            if LOSS_SCALING:
                (loss * self.loss_scale).backward()
            else:
                loss.backward()
            if not ENDS:  # with a vocabulary the losses are the outputs: no rank keeps whole logits
                outputs.append(y.detach())
            losses.append(loss.detach())
        set_phase("step")
        return outputs, losses
