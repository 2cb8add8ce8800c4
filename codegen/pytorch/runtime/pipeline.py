"""The training step of one pipeline stage among several: GPipe or 1F1B on plain isend/recv."""

from __future__ import annotations

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.batches import microbatch_loss
from par.codegen.pytorch.runtime.collectives import _recv, _send
from par.codegen.pytorch.runtime.groups import Groups, global_rank
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.spec import DTYPE, LOSS_SCALING, MICROBATCHES, PP, SCHEDULE, STREAM_SHAPE
from par.codegen.pytorch.runtime.trace import set_phase


class PipelineSchedule:
    """One training step of this stage over MICROBATCHES microbatches, in the schedule's order.

    Built on plain isend/recv rather than torch.distributed.pipelining: the DAG fixes the
    collectives of every rank, and pipelining adds its own (a warm-up vote between stages on
    the first step, metadata exchange, batched sends and receives), so a trace of what ran
    could not match the DAG. Shapes are static (STREAM_SHAPE), so receive buffers need no
    metadata. Activations go to the same tensor-parallel rank of the next stage and gradients
    come back the same way; sends are asynchronous and receives block, so no order deadlocks.
    """

    def __init__(self, stage: Stage, groups: Groups, device: torch.device) -> None:
        self.stage = stage
        if LOSS_SCALING:
            self.loss_scale = 1.0  # fp16: backward runs on the loss times this (set by each step)
        self.index = groups.stage
        self.device = device
        dp_rank, tp_rank = groups.dp_rank, groups.tp_rank
        self.previous = global_rank(dp_rank, self.index - 1, tp_rank) if self.index > 0 else None
        self.next = global_rank(dp_rank, self.index + 1, tp_rank) if self.index < PP - 1 else None

    def order(self) -> list[tuple[str, int]]:
        """The (action, microbatch) pairs this stage runs, in order."""
        if SCHEDULE == "gpipe":
            # GPipe: every microbatch forward, then every microbatch backward.
            forward = [("forward", i) for i in range(MICROBATCHES)]
            backward = [("backward", i) for i in range(MICROBATCHES)]
            return forward + backward
        else:
            # 1F1B: a few forwards to fill the pipeline, then one forward and one backward in turn.
            warmup = min(PP - 1 - self.index, MICROBATCHES)
            order = [("forward", i) for i in range(warmup)]
            for i in range(MICROBATCHES - warmup):
                order += [("forward", warmup + i), ("backward", i)]
            return order + [("backward", i) for i in range(MICROBATCHES - warmup, MICROBATCHES)]

    def step(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[list, list]:
        """Runs every microbatch; returns the outputs and losses (on the last stage, else empty)."""
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sends: list[dist.Work] = []
        outputs: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        for action, microbatch in self.order():
            set_phase(action, microbatch)
            if action == "forward":
                self._forward(microbatch, inputs, targets, outputs, losses)
            else:
                self._backward(microbatch)
        for work in self.sends:
            work.wait()
        set_phase("step")
        return outputs, losses

    def _forward(self, microbatch: int, inputs: list, targets: list, outputs: list, losses: list) -> None:
        if self.previous is None:
            x = inputs[microbatch]
        else:
            x = _recv(torch.empty(STREAM_SHAPE, dtype=DTYPE, device=self.device), self.previous).requires_grad_()
        y = self.stage(x)
        if self.next is None:
            loss = microbatch_loss(y, targets[microbatch])
            outputs.append(y.detach())
            losses.append(loss.detach())
            self.saved[microbatch] = (x, loss)
        else:
            self.sends.append(_send(y.detach(), self.next))
            self.saved[microbatch] = (x, y)

    def _backward(self, microbatch: int) -> None:
        x, y = self.saved.pop(microbatch)
        if self.next is None:
            if LOSS_SCALING:
                (y * self.loss_scale).backward()
            else:
                y.backward()
        else:
            y.backward(_recv(torch.empty_like(y), self.next))
        if self.previous is not None:
            assert x.grad is not None  # x was received and requires its gradient
            self.sends.append(_send(x.grad, self.previous))
