"""The training step of one pipeline stage under Megatron's interleaved 1F1B schedule: CHUNKS model chunks per stage.

The model is cut into PP * CHUNKS chunks (STAGES); chunk k runs on stage k % PP, so that a
microbatch goes round the pipeline CHUNKS times, the last stage handing each round's output
back to the first. Each stage runs its passes in Megatron's order (`chunk_order`).

Why no order deadlocks on NCCL: pairing each pass's send with the next pass's receive, as the
non-interleaved schedule does, hangs here once more microbatches are in flight than the ring of
stages holds (the same hang generation's ring has). So the exchanges run in lockstep: `interleaved_plan`
plays every stage's passes in rounds, each pass as soon as its inputs have arrived, and in
round r each stage posts, in one `batch_isend_irecv`, the sends of the pass it ran in round r
and the receives of what the other stages sent in round r. Every message is then sent and
received in the same round on both sides, and a round's exchanges wait on nothing but each
other. `tests/torch/test_pipeline_deadlock.py` runs the plan at 2 to 4 stages, 2 to 4 chunks
and up to 4 PP microbatches in a model where a send blocks until its receive is posted.
"""

from __future__ import annotations

import torch

from par.codegen.pytorch.runtime.batches import microbatch_loss
from par.codegen.pytorch.runtime.collectives import _exchange
from par.codegen.pytorch.runtime.groups import Groups, global_rank
from par.codegen.pytorch.runtime.model import Stage
from par.codegen.pytorch.runtime.regather import stage_forward
from par.codegen.pytorch.runtime.spec import CHUNKS, DTYPE, ENDS, LOSS_SCALING, MICROBATCHES, PP, STREAM_SHAPE, TP
from par.codegen.pytorch.runtime.trace import set_phase

# A pass: (action, microbatch, model chunk), action "forward" or "backward", the chunk an entry
# of STAGES. A message: (op, kind, microbatch, chunk, peer stage): op "send" or "recv", kind
# "activation" (the input of `chunk`'s forward) or "gradient" (of `chunk`'s output, for its backward).
Pass = tuple[str, int, int]
Message = tuple[str, str, int, int, int]


def chunk_order(stage: int) -> list[Pass]:
    """The passes `stage` runs, in Megatron's order (`forward_backward_pipelining_with_interleaving`):
    its MICROBATCHES * CHUNKS passes each way go in groups of PP microbatches per chunk, forward
    over its chunks in turn and backward in reverse; (PP - stage - 1) * 2 + (CHUNKS - 1) * PP
    warm-up forwards, then one forward and one backward in turn, then the rest backward."""
    total = MICROBATCHES * CHUNKS
    warmup = min((PP - stage - 1) * 2 + (CHUNKS - 1) * PP, total)

    def run(action: str, i: int) -> Pass:
        local = (i // PP) % CHUNKS
        if action == "backward":
            local = CHUNKS - 1 - local
        return action, (i // (PP * CHUNKS)) * PP + i % PP, local * PP + stage

    order = [run("forward", i) for i in range(warmup)]
    for i in range(total - warmup):
        order += [run("forward", warmup + i), run("backward", i)]
    return order + [run("backward", i) for i in range(total - warmup, total)]


def _needs(action: str, microbatch: int, chunk: int) -> list[tuple[str, int, int]]:
    """What a pass receives before it runs: (kind, microbatch, chunk)."""
    if action == "forward":
        return [("activation", microbatch, chunk)] if chunk > 0 else []
    else:
        return [("gradient", microbatch, chunk)] if chunk < PP * CHUNKS - 1 else []


def _gives(action: str, microbatch: int, chunk: int) -> list[tuple[str, int, int]]:
    """What a pass sends when it has run: (kind, microbatch, chunk it is for)."""
    if action == "forward":
        return [("activation", microbatch, chunk + 1)] if chunk < PP * CHUNKS - 1 else []
    else:
        return [("gradient", microbatch, chunk - 1)] if chunk > 0 else []


def interleaved_plan() -> list[list[Pass | list[Message]]]:
    """Every stage's passes and exchanges, in lockstep rounds (the module's docstring)."""
    orders = [chunk_order(stage) for stage in range(PP)]
    position = [0] * PP
    arrived: list[set[tuple[str, int, int]]] = [set() for _ in range(PP)]
    plans: list[list[Pass | list[Message]]] = [[] for _ in range(PP)]
    while any(position[stage] < len(orders[stage]) for stage in range(PP)):
        sent: list[tuple[int, int, tuple[str, int, int]]] = []  # (from stage, to stage, message)
        for stage in range(PP):
            if position[stage] == len(orders[stage]):
                continue
            action, microbatch, chunk = orders[stage][position[stage]]
            if all(need in arrived[stage] for need in _needs(action, microbatch, chunk)):
                plans[stage].append((action, microbatch, chunk))
                position[stage] += 1
                sent += [(stage, given[2] % PP, given) for given in _gives(action, microbatch, chunk)]
        exchanges: list[list[Message]] = [[] for _ in range(PP)]
        for source, target, (kind, microbatch, chunk) in sent:
            exchanges[source].append(("send", kind, microbatch, chunk, target))
            exchanges[target].append(("recv", kind, microbatch, chunk, source))
            arrived[target].add((kind, microbatch, chunk))
        for stage, exchange in enumerate(exchanges):
            if exchange:
                plans[stage].append(exchange)
    return plans


class PipelineSchedule:
    """One training step of this stage over MICROBATCHES microbatches, its CHUNKS model chunks interleaved.

    As the non-interleaved schedule: batched isend/irecv, static shapes (STREAM_SHAPE), each
    tensor to the same tensor-parallel rank of the peer stage. The stage module holds the layers
    of all its chunks; `stage.chunk` selects the one a forward runs.
    """

    def __init__(self, stage: Stage, groups: Groups, device: torch.device) -> None:
        self.stage = stage
        if LOSS_SCALING:
            self.loss_scale = 1.0  # fp16: backward runs on the loss times this (set by each step)
        self.index = groups.stage
        self.device = device
        self.peers = [global_rank(groups.dp_rank, peer, groups.tp_rank, groups.cp_rank) for peer in range(PP)]
        self.plan = interleaved_plan()[self.index]

    def step(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[list, list]:
        """Runs every microbatch; returns the outputs and losses (on the last stage, else empty)."""
        self.saved: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # what this stage has to send, and what it received, by (kind, microbatch, chunk)
        self.outbox: dict[tuple[str, int, int], torch.Tensor] = {}
        self.inbox: dict[tuple[str, int, int], torch.Tensor] = {}
        outputs: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        for item in self.plan:
            if isinstance(item, list):
                self._exchange(item)
                continue
            action, microbatch, chunk = item
            set_phase(action, microbatch)
            if action == "forward":
                self._forward(microbatch, chunk, inputs, targets, outputs, losses)
            else:
                self._backward(microbatch, chunk)
        set_phase("step")
        return outputs, losses

    def _exchange(self, messages: list[Message]) -> None:
        posted = []
        for op, kind, microbatch, chunk, peer in messages:
            if op == "send":
                tensor = self.outbox.pop((kind, microbatch, chunk))
            else:
                tensor = torch.empty(STREAM_SHAPE, dtype=DTYPE, device=self.device)
                self.inbox[kind, microbatch, chunk] = tensor
            phase = "forward" if kind == "activation" else "backward"
            posted.append((op, tensor, self.peers[peer], phase, microbatch))
        _exchange(posted)

    def _forward(self, microbatch: int, chunk: int, inputs: list, targets: list, outputs: list, losses: list) -> None:
        received = ("activation", microbatch, chunk)
        x = inputs[microbatch] if chunk == 0 else self.inbox.pop(received).requires_grad_()
        self.stage.chunk = chunk // PP
        if TP > 1:  # noqa: SIM108 - a statement, so the inliner folds it per spec
            y = stage_forward(self.stage, x)
        else:
            y = self.stage(x)
        if chunk == PP * CHUNKS - 1:
            loss = microbatch_loss(self.stage, y, targets[microbatch])
            if not ENDS:  # with a vocabulary the losses are the outputs: no rank keeps whole logits
                outputs.append(y.detach())
            losses.append(loss.detach())
            self.saved[microbatch, chunk] = (x, loss)
        else:
            self.outbox["activation", microbatch, chunk + 1] = y.detach()
            self.saved[microbatch, chunk] = (x, y)

    def _backward(self, microbatch: int, chunk: int) -> None:
        x, y = self.saved.pop((microbatch, chunk))
        if chunk == PP * CHUNKS - 1:
            if LOSS_SCALING:
                (y * self.loss_scale).backward()
            else:
                y.backward()
        else:
            y.backward(self.inbox.pop(("gradient", microbatch, chunk)))
        if chunk > 0:
            assert x.grad is not None  # x was received and requires its gradient
            self.outbox["gradient", microbatch, chunk - 1] = x.grad
