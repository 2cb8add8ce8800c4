"""The optimizer: AdamW on fp32 master weights, and dynamic loss scaling for fp16."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.collectives import _all_gather
from par.codegen.pytorch.runtime.groups import SHARDS, shard_index
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.spec import DTYPE, LOSS_SCALING, MIXED_PRECISION, WORLD_SIZE, ZERO
from par.codegen.pytorch.runtime.step import GradientBuffer, zero_part_of

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
            weights = {name: param.detach() for name, param in buffer.named}
            parts = zero_part_of(buffer, weights, shard_index(dist.get_rank()))
            self.weights = {"part": parts}
            self.weights["part"].grad = buffer.main
        if ZERO == 1:
            self.flat = flat_parameters(buffer)
            first = shard_index(dist.get_rank()) * buffer.part
            self.part = self.flat[first : first + buffer.part]  # this rank's part of the weights
            self.weights = {"part": self.part}
            if MIXED_PRECISION:
                self.weights["part"] = self.part.float()  # the fp32 master weights of the part
            self.weights["part"].grad = buffer.main
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
                    self.part.copy_(self.weights["part"])
                self.flat.copy_(_all_gather(self.part, 0, self.buffer.group))
        if ZERO == 2:
            with torch.no_grad():
                gather_parts(self.buffer, _all_gather(self.weights["part"].to(DTYPE), 0, self.buffer.group))
        if not ZERO and MIXED_PRECISION:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.weights[name])


def flat_parameters(buffer: GradientBuffer) -> torch.Tensor:
    """ZeRO (stage 1, Megatron's distributed optimizer): one flat DTYPE tensor of the stage's
    parameters, in the order and padding of the gradient buffer; each parameter becomes a view of
    it. Each rank of the gradient group (dp x cp) keeps AdamW's state and the master weights of
    its 1/SHARDS part only, updates that part from its reduced gradients, and the parts are
    AllGathered into the flat tensor after the step, which writes every parameter."""
    named = buffer.named
    flat = torch.zeros(buffer.part * SHARDS, dtype=DTYPE, device=named[0][1].device)
    sizes = [param.numel() for _, param in named]
    with torch.no_grad():
        for (_, param), part in zip(named, flat[: sum(sizes)].split(sizes), strict=True):
            part.copy_(param.reshape(-1))
            param.data = part.view_as(param)
    return flat


def gather_parts(buffer: GradientBuffer, gathered: torch.Tensor) -> None:
    """zero 2: every rank's parts of the weights, gathered (rank after rank, each in the
    buffer's layout), written back into each parameter."""
    rows = gathered.view(SHARDS, -1)  # rank r's parts
    first = 0
    for _, param in buffer.named:
        size = -(-param.numel() // SHARDS)
        param.copy_(rows[:, first : first + size].reshape(-1)[: param.numel()].view_as(param))
        first += size
