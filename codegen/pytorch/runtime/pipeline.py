"""The training step of one pipeline stage among several: GPipe or 1F1B on batched sends and receives.

Why no order deadlocks on NCCL: NCCL may hold a send until its receive is posted (and a
receive until its send is), and runs a rank's operations in order. So no rank posts a send on
its own and then a receive behind it: every exchange posts, in one `batch_isend_irecv`, the
send of the action just run together with the receive of the action about to run, and waits
for both. On a link between stages s and s + 1, the exchanges then mirror each other, as
Megatron's do: 1F1B's "send activation i, receive gradient j" on s meets "send gradient j,
receive activation i" on s + 1 (each side posts what the other waits for, in the same
exchange); in warm-up, cool-down and GPipe the link carries one direction at a time, so each
send meets a receive the peer posts next, before it waits on anything else. With gloo
(asynchronous sends) the old order was safe too; with NCCL it was not.
`tests/torch/test_pipeline_deadlock.py` runs every schedule we emit, at 2 to 4 stages and 1 to
8 microbatches, in a model where a send blocks until its receive is posted: all finish, each
send meeting the receive meant for it, and the unbatched order deadlocks there.
"""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.batches import microbatch_loss
from par.codegen.pytorch.runtime.collectives import _exchange
from par.codegen.pytorch.runtime.groups import Groups, global_rank
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.regather import stage_forward
from par.codegen.pytorch.runtime.spec import DTYPE, ENDS, LOSS_SCALING, MICROBATCHES, PP, SCHEDULE, STREAM_SHAPE, TP
from par.codegen.pytorch.runtime.trace import set_phase

# A message between neighbouring stages: (op, kind, microbatch, peer): op "send" or "recv", kind
# "activation" (forward) or "gradient" (backward), peer "previous" or "next" stage.
Message = tuple[str, str, int, str]


def schedule_order(stage: int) -> list[tuple[str, int]]:
    """The (action, microbatch) pairs `stage` runs, in order."""
    if SCHEDULE == "gpipe":
        # GPipe: every microbatch forward, then every microbatch backward.
        forward = [("forward", i) for i in range(MICROBATCHES)]
        backward = [("backward", i) for i in range(MICROBATCHES)]
        return forward + backward
    else:
        # 1F1B: a few forwards to fill the pipeline, then one forward and one backward in turn.
        warmup = min(PP - 1 - stage, MICROBATCHES)
        order = [("forward", i) for i in range(warmup)]
        for i in range(MICROBATCHES - warmup):
            order += [("forward", warmup + i), ("backward", i)]
        return order + [("backward", i) for i in range(MICROBATCHES - warmup, MICROBATCHES)]


def _receives(action: str, microbatch: int, stage: int) -> list[Message]:
    if action == "forward":
        return [("recv", "activation", microbatch, "previous")] if stage > 0 else []
    else:
        return [("recv", "gradient", microbatch, "next")] if stage < PP - 1 else []


def _sends(action: str, microbatch: int, stage: int) -> list[Message]:
    if action == "forward":
        return [("send", "activation", microbatch, "next")] if stage < PP - 1 else []
    else:
        return [("send", "gradient", microbatch, "previous")] if stage > 0 else []


def schedule_plan(stage: int) -> list[tuple[str, int] | list[Message]]:
    """The stage's actions, each preceded by one exchange: the previous action's send and this one's receive."""
    plan: list[tuple[str, int] | list[Message]] = []
    owed: list[Message] = []
    for action, microbatch in schedule_order(stage):
        exchange = owed + _receives(action, microbatch, stage)
        if exchange:
            plan.append(exchange)
        plan.append((action, microbatch))
        owed = _sends(action, microbatch, stage)
    if owed:
        plan.append(owed)
    return plan


class PipelineSchedule:
    """One training step of this stage over MICROBATCHES microbatches, in the schedule's order.

    Built on batched isend/irecv rather than torch.distributed.pipelining: the DAG fixes the
    collectives of every rank, and pipelining adds its own (a warm-up vote between stages on
    the first step, metadata exchange), so a trace of what ran could not match the DAG. Shapes
    are static (STREAM_SHAPE), so receive buffers need no metadata. Activations go to the same
    tensor-parallel rank of the next stage and gradients come back the same way.
    """

    def __init__(self, stage: Stage, groups: Groups, device: torch.device) -> None:
        self.stage = stage
        if LOSS_SCALING:
            self.loss_scale = 1.0  # fp16: backward runs on the loss times this (set by each step)
        self.index = groups.stage
        self.device = device
        dp_rank, tp_rank, cp_rank = groups.dp_rank, groups.tp_rank, groups.cp_rank
        self.peers = {
            "previous": global_rank(dp_rank, self.index - 1, tp_rank, cp_rank) if self.index > 0 else -1,
            "next": global_rank(dp_rank, self.index + 1, tp_rank, cp_rank) if self.index < PP - 1 else -1,
        }

    def step(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[list, list]:
        """Runs every microbatch; returns the outputs and losses (on the last stage, else empty)."""
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # what this stage has to send, and what it received, by (kind, microbatch)
        self.outbox: dict[tuple[str, int], torch.Tensor] = {}
        self.inbox: dict[tuple[str, int], torch.Tensor] = {}
        outputs: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        for item in schedule_plan(self.index):
            if isinstance(item, list):
                self._exchange(item)
                continue
            action, microbatch = item
            set_phase(action, microbatch)
            if action == "forward":
                self._forward(microbatch, inputs, targets, outputs, losses)
            else:
                self._backward(microbatch)
        set_phase("step")
        return outputs, losses

    def _exchange(self, messages: list[Message]) -> None:
        posted = []
        for op, kind, microbatch, peer in messages:
            if op == "send":
                tensor = self.outbox.pop((kind, microbatch))
            else:
                tensor = torch.empty(STREAM_SHAPE, dtype=DTYPE, device=self.device)
                self.inbox[kind, microbatch] = tensor
            phase = "forward" if kind == "activation" else "backward"
            posted.append((op, tensor, self.peers[peer], phase, microbatch))
        _exchange(posted)

    def _forward(self, microbatch: int, inputs: list, targets: list, outputs: list, losses: list) -> None:
        x = inputs[microbatch] if self.index == 0 else self.inbox.pop(("activation", microbatch)).requires_grad_()
        if TP > 1:  # noqa: SIM108 - a statement, so the inliner folds it per spec
            y = stage_forward(self.stage, x)
        else:
            y = self.stage(x)
        if self.index == PP - 1:
            loss = microbatch_loss(self.stage, y, targets[microbatch])
            if not ENDS:  # with a vocabulary the losses are the outputs: no rank keeps whole logits
                outputs.append(y.detach())
            losses.append(loss.detach())
            self.saved[microbatch] = (x, loss)
        else:
            self.outbox["activation", microbatch] = y.detach()
            self.saved[microbatch] = (x, y)

    def _backward(self, microbatch: int) -> None:
        x, y = self.saved.pop(microbatch)
        if self.index == PP - 1:
            if LOSS_SCALING:
                (y * self.loss_scale).backward()
            else:
                y.backward()
        else:
            y.backward(self.inbox.pop(("gradient", microbatch)))
        if self.index > 0:
            assert x.grad is not None  # x was received and requires its gradient
            self.outbox["gradient", microbatch] = x.grad
