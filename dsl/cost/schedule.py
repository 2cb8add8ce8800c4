"""Pipeline schedules (GPipe, 1F1B, interleaved 1F1B), simulated slot by slot; the bubble is measured on the result.

Stage `s` runs its forward (F) and backward (B) passes of each microbatch in the order its
schedule gives, each as soon as its inputs are there: F(s, j) after F(s-1, j) plus the link
time, B(s, j) after F(s, j) and after B(s+1, j) plus the link time. Interleaved, the same holds
for model chunks k = 0 .. p·v - 1 (chunk k on stage k mod p), and a stage runs one pass at a
time. Pure functions of numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from par.dsl.checks.deployment import SCHEDULES


@dataclass(frozen=True, slots=True)
class Slot:
    """One forward or backward pass of a microbatch on a stage, in the pipeline's schedule."""

    stage: int
    microbatch: int
    phase: str  # "F" | "B"
    start: float
    end: float
    chunk: int = 0  # interleaved: which of the stage's model chunks (0 .. v - 1) the pass runs



def stage_order(schedule: str, *, stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """The (phase, microbatch) sequence stage `stage` runs.

    gpipe: every forward, then every backward. 1f1b (non-interleaved, flushing): p - stage - 1
    warm-up forwards, then one forward and one backward in turn, then the remaining backwards.
    """
    if schedule == "gpipe":
        return [("F", j) for j in range(microbatches)] + [("B", j) for j in range(microbatches)]
    if schedule != "1f1b":
        raise ValueError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    warmup = min(stages - stage - 1, microbatches)
    order = [("F", j) for j in range(warmup)]
    for j in range(microbatches - warmup):
        order += [("F", warmup + j), ("B", j)]
    order += [("B", j) for j in range(microbatches - warmup, microbatches)]
    return order


def interleaved_order(*, stage: int, stages: int, microbatches: int, chunks: int) -> list[tuple[str, int, int]]:
    """The (phase, microbatch, local chunk) sequence stage `stage` runs in Megatron's interleaved
    1F1B (Narayanan et al. 2021, section 2.2; Megatron-LM's
    `forward_backward_pipelining_with_interleaving`). Its m·v passes of each direction go in
    groups of p microbatches per chunk: pass i runs microbatch (i // (p·v))·p + i mod p on chunk
    (i // p) mod v forward, and on the chunks in reverse order backward. (p - s - 1)·2 + (v - 1)·p
    warm-up forwards, then one forward and one backward in turn, then the remaining backwards.
    Needs m a multiple of p."""
    p, v = stages, chunks
    total = microbatches * v
    warmup = min((p - stage - 1) * 2 + (v - 1) * p, total)

    def run(phase: str, i: int) -> tuple[str, int, int]:
        chunk = (i // p) % v
        return phase, (i // (p * v)) * p + i % p, chunk if phase == "F" else v - 1 - chunk

    order = [run("F", i) for i in range(warmup)]
    for i in range(total - warmup):
        order += [run("F", warmup + i), run("B", i)]
    return order + [run("B", i) for i in range(total - warmup, total)]


def in_flight(order: Sequence[tuple]) -> int:
    """Most passes whose forward has run and whose backward has not: activations held at once
    (interleaved: model chunks of microbatches)."""
    held = peak = 0
    for phase, *_ in order:
        held += 1 if phase == "F" else -1
        peak = max(peak, held)
    return peak


def simulate(
    schedule: str,
    *,
    forward: Sequence[float],
    backward: Sequence[float],
    links: Sequence[float],
    microbatches: int,
    chunks: int = 1,
) -> list[Slot]:
    """Slots of every stage, in the order they run. `forward[k]`, `backward[k]`: one pass of
    stage k, or interleaved (`chunks` > 1) of model chunk k; `links[k]`: transfer time from k to
    k + 1."""
    parts = len(forward)
    stages = parts // chunks
    if schedule == "interleaved":
        orders = [
            [(phase, j, local * stages + s) for phase, j, local in interleaved_order(stage=s, stages=stages, microbatches=microbatches, chunks=chunks)]
            for s in range(stages)
        ]
    else:
        orders = [[(phase, j, s) for phase, j in stage_order(schedule, stage=s, stages=stages, microbatches=microbatches)] for s in range(stages)]
    ends: dict[tuple[str, int, int], float] = {}
    position, free = [0] * stages, [0.0] * stages
    slots: list[Slot] = []
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for stage in range(stages):
            while position[stage] < len(orders[stage]):
                phase, microbatch, part = orders[stage][position[stage]]
                ready = _ready(phase, part, microbatch, ends, links, parts)
                if ready is None:
                    break
                start = max(free[stage], ready)
                end = start + (forward[part] if phase == "F" else backward[part])
                ends[(phase, part, microbatch)] = end
                slots.append(Slot(stage, microbatch, phase, start, end, part // stages))
                free[stage] = end
                position[stage] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"the {schedule} schedule deadlocks")  # not reachable for these schedules
    return sorted(slots, key=lambda slot: (slot.stage, slot.start))


def _ready(phase: str, stage: int, microbatch: int, ends: dict, links: Sequence[float], stages: int) -> float | None:
    """When the inputs of a pass are there; None while one has not run yet."""
    needs: list[tuple[tuple[str, int, int], float]] = []
    if phase == "F" and stage > 0:
        needs.append((("F", stage - 1, microbatch), links[stage - 1]))
    if phase == "B":
        needs.append((("F", stage, microbatch), 0.0))
        if stage + 1 < stages:
            needs.append((("B", stage + 1, microbatch), links[stage]))
    ready = 0.0
    for key, delay in needs:
        if key not in ends:
            return None
        ready = max(ready, ends[key] + delay)
    return ready


def makespan(slots: Sequence[Slot]) -> float:
    return max(slot.end for slot in slots) - min(slot.start for slot in slots)


def busy(slots: Sequence[Slot], stage: int) -> float:
    return sum(slot.end - slot.start for slot in slots if slot.stage == stage)


def bubble_fraction(slots: Sequence[Slot], stages: int) -> float:
    """Idle device time / total device time: 1 - (busy time of all stages) / (stages x makespan)."""
    total = stages * makespan(slots)
    return 1.0 - sum(busy(slots, stage) for stage in range(stages)) / total


def closed_form_bubble(*, stages: int, microbatches: int, chunks: int = 1) -> Fraction:
    """Idle / total device time for equal stages, backward a fixed multiple of forward:
    (p - 1) / (m + p - 1) for GPipe and 1F1B alike. Interleaved with v chunks per stage the
    bubble is (p - 1) / v passes of a whole stage (Narayanan et al. 2021: (p - 1) / (m·v) of the
    ideal time), so (p - 1) / (v·m + p - 1) of the total."""
    return Fraction(stages - 1, chunks * microbatches + stages - 1)
