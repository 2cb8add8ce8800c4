"""Pipeline schedules (GPipe, 1F1B), simulated slot by slot; the bubble is measured on the result.

Stage `s` runs its forward (F) and backward (B) passes of each microbatch in the order its
schedule gives, each as soon as its inputs are there: F(s, j) after F(s-1, j) plus the link
time, B(s, j) after F(s, j) and after B(s+1, j) plus the link time. Pure functions of numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from par.dsl.checks.deployment import SCHEDULES


@dataclass(frozen=True, slots=True)
class Slot:
    stage: int
    microbatch: int
    phase: str  # "F" | "B"
    start: float
    end: float


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


def in_flight(order: Sequence[tuple[str, int]]) -> int:
    """Most microbatches whose forward has run and whose backward has not: activations held at once."""
    held = peak = 0
    for phase, _ in order:
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
) -> list[Slot]:
    """Slots of every stage, in the order they run. `links[s]`: transfer time between stages s and s+1."""
    stages = len(forward)
    orders = [stage_order(schedule, stage=s, stages=stages, microbatches=microbatches) for s in range(stages)]
    ends: dict[tuple[str, int, int], float] = {}
    position, free = [0] * stages, [0.0] * stages
    slots: list[Slot] = []
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for stage in range(stages):
            while position[stage] < len(orders[stage]):
                phase, microbatch = orders[stage][position[stage]]
                ready = _ready(phase, stage, microbatch, ends, links, stages)
                if ready is None:
                    break
                start = max(free[stage], ready)
                end = start + (forward[stage] if phase == "F" else backward[stage])
                ends[(phase, stage, microbatch)] = end
                slots.append(Slot(stage, microbatch, phase, start, end))
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


def closed_form_bubble(*, stages: int, microbatches: int) -> Fraction:
    """(p - 1) / (m + p - 1): GPipe and 1F1B alike, equal stages, backward a fixed multiple of forward."""
    return Fraction(stages - 1, microbatches + stages - 1)
