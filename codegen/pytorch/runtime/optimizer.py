"""The optimizer: AdamW on fp32 master weights, and dynamic loss scaling for fp16."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.collectives import _all_gather
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.spec import DTYPE, LOSS_SCALING, MIXED_PRECISION, WORLD_SIZE, ZERO
from par.codegen.pytorch.runtime.step import GradientBuffer
from par.codegen.pytorch.runtime.zero import gather_parts, part_of

# -- Optimizer ----------------------------------------------------------------------------------


class LossScaler:
    """The loss scale of fp16 training, as torch.amp.GradScaler keeps it, and the steps it skipped.

    The loss is multiplied by the scale before backward, so that small gradients stay inside
    fp16's range. A step whose gradients hold an inf or NaN on any rank is skipped on every rank
    and the scale multiplied by BACKOFF; after GROWTH_INTERVAL steps in a row without one, it is
    multiplied by GROWTH.
    """

    INITIAL = 2.0**16
    GROWTH = 2.0
    BACKOFF = 0.5
    GROWTH_INTERVAL = 2000

    def __init__(self) -> None:
        self.scale = self.INITIAL
        self.good_steps = 0
        self.skipped = 0
        self.finite = True  # whether the last step's gradients were finite (else it was skipped)

    def unscale(self, grads: torch.Tensor) -> bool:
        """Divides `grads` by the scale; whether every rank's are finite (the scale is updated)."""
        grads.div_(self.scale)
        finite = all_finite(grads)
        self.update(finite)
        return finite

    def update(self, finite: bool) -> None:
        self.finite = finite
        if not finite:
            self.scale *= self.BACKOFF
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps == self.GROWTH_INTERVAL:
            self.scale *= self.GROWTH
            self.good_steps = 0


def all_finite(grads: torch.Tensor) -> bool:
    """Whether every rank's gradients are finite: all ranks skip a step together or none does."""
    finite = torch.isfinite(grads).all().float().reshape(1)
    if WORLD_SIZE > 1:
        # Not one of the model's collectives (neither traced nor in the DAG): 4 bytes a step.
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return finite.item() == 1


class Optimizer:
    """AdamW on fp32 weights and state, reading the fp32 gradients of `buffer`.

    In fp16/bf16 the stage's parameters are copies of fp32 master weights, written back after
    every step: an update smaller than one fp16/bf16 step still moves the master weight.
    """

    def __init__(self, stage: Stage, buffer: GradientBuffer, lr: float) -> None:
        self.buffer = buffer
        self.params: dict[str, torch.Tensor] = dict(stage.named_parameters())
        if ZERO == 2:
            # This rank's part of each weight, in fp32: what its AdamW updates (docs/pytorch.md).
            weights = {name: param.detach() for name, param in self.params.items()}
            self.weights = {"part": part_of(buffer.regions, weights)}
            self.weights["part"].grad = buffer.main
        if ZERO == 1:
            self.weights = {}
            self.flat = flat_parameters(buffer)
            # this rank's part of each region's weights, and of their reduced gradients
            self.parts = [self.flat[region.mine()] for region in buffer.regions]
            for index, (region, part) in enumerate(zip(buffer.regions, self.parts, strict=True)):
                weight = part
                if MIXED_PRECISION:
                    weight = part.float()  # the fp32 master weights of the part
                weight.grad = buffer.main[region.first : region.first + region.part]
                self.weights[f"part {index}"] = weight
        if not ZERO:
            if MIXED_PRECISION:
                self.weights = {name: param.detach().float() for name, param in self.params.items()}
            else:
                self.weights = self.params
        if not ZERO:
            for name, weight in self.weights.items():
                weight.grad = buffer.main_views[name]
        self.adamw = torch.optim.AdamW(list(self.weights.values()), lr=lr)
        if LOSS_SCALING:
            self.scaler = LossScaler()

    def step(self) -> None:
        """One AdamW step on the reduced gradients; skipped in fp16 if one is inf or NaN on any rank."""
        if LOSS_SCALING and not self.scaler.unscale(self.buffer.main):
            return
        self.adamw.step()
        if ZERO == 1:
            with torch.no_grad():
                if MIXED_PRECISION:
                    for part, weight in zip(self.parts, self.weights.values(), strict=True):
                        part.copy_(weight)
                for region, part in zip(self.buffer.regions, self.parts, strict=True):
                    if region.parts > 1:
                        run = self.flat[region.start : region.start + region.length]
                        run.copy_(_all_gather(part, 0, region.group(self.buffer.groups)))
        if ZERO == 2:
            with torch.no_grad():
                gather_parts(self.buffer.regions, self.weights["part"].to(DTYPE), self.buffer.groups)
        if not ZERO and MIXED_PRECISION:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.weights[name])


def flat_parameters(buffer: GradientBuffer) -> torch.Tensor:
    """ZeRO (stage 1, Megatron's distributed optimizer): one flat DTYPE tensor of the stage's
    parameters, in the order and padding of the gradient buffer; each parameter becomes a view of
    it. Each rank of a region's gradient group keeps AdamW's state and the master weights of its
    part of the region only, updates that part from its reduced gradients, and the parts are
    AllGathered into the flat tensor after the step, which writes every parameter."""
    flat = torch.zeros(buffer.flat.numel(), dtype=DTYPE, device=buffer.flat.device)
    with torch.no_grad():
        for region in buffer.regions:
            for _, param, part in region.flat_parts(flat):
                part.copy_(param.reshape(-1))
                param.data = part.view_as(param)
    return flat
