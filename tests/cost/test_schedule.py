"""Pipeline schedules: simulated bubble against (p-1)/(m+p-1), microbatches in flight, dependencies."""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from par.dsl.cost.schedule import (
    bubble_fraction,
    closed_form_bubble,
    in_flight,
    makespan,
    simulate,
    stage_order,
)


def _uniform(schedule: str, p: int, m: int, forward: float = 1.0, backward: float = 2.0):
    return simulate(schedule, forward=[forward] * p, backward=[backward] * p, links=[0.0] * (p - 1), microbatches=m)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 4, 8, 13])
def test_equal_stages_give_the_closed_form_bubble(schedule, p, m):
    slots = _uniform(schedule, p, m)
    assert bubble_fraction(slots, p) == pytest.approx((p - 1) / (m + p - 1))
    assert makespan(slots) == pytest.approx(3 * (m + p - 1))


@pytest.mark.parametrize("ratio", [1.0, 2.0, 3.5])
def test_the_bubble_does_not_depend_on_the_backward_forward_ratio(ratio):
    for schedule in ("gpipe", "1f1b"):
        slots = _uniform(schedule, 4, 6, forward=1.0, backward=ratio)
        assert bubble_fraction(slots, 4) == pytest.approx(3 / 9)


def test_closed_form_is_exact():
    assert closed_form_bubble(stages=4, microbatches=8) == Fraction(3, 11)
    assert closed_form_bubble(stages=1, microbatches=5) == 0


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 2), (8, 3)])
def test_microbatches_in_flight(p, m):
    for stage in range(p):
        assert in_flight(stage_order("gpipe", stage=stage, stages=p, microbatches=m)) == m
        assert in_flight(stage_order("1f1b", stage=stage, stages=p, microbatches=m)) == min(p - stage, m)


def test_unequal_stages_raise_the_bubble_above_the_closed_form():
    forward = [3.0, 1.0, 1.0]  # a stage with three times the layers of the others
    slots = simulate("1f1b", forward=forward, backward=[2 * f for f in forward], links=[0.0, 0.0], microbatches=6)
    assert bubble_fraction(slots, 3) > (3 - 1) / (6 + 3 - 1)
    # The slowest stage is busy the whole time but its own fill and drain.
    assert makespan(slots) >= 6 * 9.0


def test_links_delay_every_hop():
    slots = simulate("gpipe", forward=[1.0, 1.0], backward=[2.0, 2.0], links=[0.5], microbatches=1)
    assert makespan(slots) == pytest.approx(1 + 0.5 + 1 + 2 + 0.5 + 2)


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.sampled_from(["gpipe", "1f1b"]),
    forward=st.lists(st.floats(0.1, 5.0), min_size=1, max_size=5),
    m=st.integers(1, 9),
    ratio=st.floats(0.5, 3.0),
    link=st.floats(0.0, 1.0),
)
def test_every_pass_runs_once_after_its_inputs(schedule, forward, m, ratio, link):
    p = len(forward)
    backward = [ratio * f for f in forward]
    slots = simulate(schedule, forward=forward, backward=backward, links=[link] * (p - 1), microbatches=m)
    at = {(s.phase, s.stage, s.microbatch): s for s in slots}
    assert len(at) == len(slots) == 2 * p * m
    for (phase, stage, j), slot in at.items():
        if phase == "F" and stage > 0:
            assert slot.start >= at[("F", stage - 1, j)].end + link - 1e-9
        if phase == "B":
            assert slot.start >= at[("F", stage, j)].end - 1e-9
            if stage + 1 < p:
                assert slot.start >= at[("B", stage + 1, j)].end + link - 1e-9
    for stage in range(p):  # a stage runs one pass at a time
        mine = sorted((s for s in slots if s.stage == stage), key=lambda s: s.start)
        assert all(a.end <= b.start + 1e-9 for a, b in pairwise(mine))
    assert 0.0 <= bubble_fraction(slots, p) < 1.0
