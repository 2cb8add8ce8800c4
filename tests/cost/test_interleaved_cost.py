"""The interleaved 1F1B schedule in the cost model: the simulated bubble against Narayanan et
al. 2021's (p - 1) / (m·v), the passes' dependencies, in-flight memory against Korthikanti et
al. 2022's count for the first stage, and the report and timeline that show the chunks."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest

from par.codegen.cost import render_report
from par.codegen.cost.timeline import timeline_view
from par.dsl.compiler import compile_text
from par.dsl.cost import cost_of
from par.dsl.cost.estimate import in_flight
from par.dsl.cost.schedule import bubble_fraction, busy, interleaved_order, makespan, simulate

GRID = [(p, v, m) for p in (2, 3, 4) for v in (2, 3) for m in (p, 2 * p, 4 * p)]


def _uniform(p: int, v: int, m: int, forward: float = 1.0, backward: float = 2.0, link: float = 0.0):
    """Chunks of equal time: a whole stage's forward is v·forward."""
    parts = p * v
    return simulate("interleaved", forward=[forward] * parts, backward=[backward] * parts, links=[link] * (parts - 1), microbatches=m, chunks=v)


@pytest.mark.parametrize(("p", "v", "m"), GRID)
def test_equal_chunks_give_narayanans_bubble(p, v, m):
    slots = _uniform(p, v, m)
    idle = p * makespan(slots) - sum(busy(slots, stage) for stage in range(p))
    ideal = m * v * 3.0  # per stage: m microbatches of v chunks, forward 1 + backward 2
    assert idle / p / ideal == pytest.approx((p - 1) / (m * v))  # the paper's normalisation
    assert bubble_fraction(slots, p) == pytest.approx((p - 1) / (v * m + p - 1))  # idle / total


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16)])
def test_interleaving_cuts_1f1b_s_bubble_by_the_chunks(p, m):
    """The same stage times, cut into v chunks: the bubble's idle time is v times shorter."""
    whole = simulate("1f1b", forward=[2.0] * p, backward=[4.0] * p, links=[0.0] * (p - 1), microbatches=m)
    split = _uniform(p, 2, m)
    assert makespan(whole) - 6.0 * m == pytest.approx(2 * (makespan(split) - 6.0 * m))


@pytest.mark.parametrize(("p", "v", "m"), [(2, 2, 4), (3, 2, 6), (4, 3, 8)])
def test_every_pass_waits_for_its_inputs_and_a_stage_runs_one_at_a_time(p, v, m):
    link = 0.25
    slots = _uniform(p, v, m, link=link)
    end = {(s.phase, s.chunk * p + s.stage, s.microbatch): s.end for s in slots}
    start = {(s.phase, s.chunk * p + s.stage, s.microbatch): s.start for s in slots}
    assert len(end) == 2 * p * v * m  # every pass of every model chunk once
    for (phase, k, j), begun in start.items():
        if phase == "F" and k > 0:
            assert begun >= end["F", k - 1, j] + link
        if phase == "B":
            assert begun >= end["F", k, j]
            if k + 1 < p * v:
                assert begun >= end["B", k + 1, j] + link
    for stage in range(p):
        runs = sorted((s.start, s.end) for s in slots if s.stage == stage)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(runs, runs[1:], strict=False))


@pytest.mark.parametrize(("p", "v", "m"), [(2, 2, 8), (4, 2, 16), (4, 4, 32), (8, 2, 32)])
def test_the_first_stage_holds_korthikantis_count_of_microbatches(p, v, m):
    """Korthikanti et al. 2022 (section 4.2.3): interleaving makes the first stage hold
    p·(1 + (p - 1) / (p·v)) microbatches' activations, when m is large enough."""
    assert in_flight("interleaved", stage=0, stages=p, microbatches=m, chunks=v) == p * (1 + Fraction(p - 1, p * v))
    held = [in_flight("interleaved", stage=s, stages=p, microbatches=m, chunks=v) for s in range(p)]
    assert held == sorted(held, reverse=True)  # the first stage holds the most


def test_each_stage_runs_each_pass_of_its_chunks_once():
    p, v, m = 4, 3, 8
    for stage in range(p):
        order = interleaved_order(stage=stage, stages=p, microbatches=m, chunks=v)
        assert Counter(order) == Counter((phase, j, c) for phase in "FB" for j in range(m) for c in range(v))


SPEC = (
    "model m : gpt { layers 8  hidden 32  heads 4  batch 8  seq 8  dtype fp32 }\n"
    "mesh { tp 2  pp 2  microbatches 4  schedule interleaved  chunks 2 }\n"
)


@pytest.fixture(scope="module")
def cost():
    return cost_of(compile_text(SPEC, "t.par").graph, hardware=None)


def test_a_spec_s_cost_simulates_its_chunks(cost):
    times = cost.estimate.stages
    assert (len(times.forward), len(times.links), times.devices) == (4, 3, 2)
    assert len(set(times.forward)) == 1  # equal chunks of equal layers
    assert cost.estimate.bubble == pytest.approx(float(cost.closed_form_bubble)) == pytest.approx(1 / 9)
    stage0 = next(group for group in cost.groups if group.cost.stage == 0)
    assert stage0.memory.in_flight == Fraction(5, 2)  # (v·p + p - 1) / v
    assert stage0.memory.activations == -(-stage0.memory.activations_per_microbatch * 5 // 2)


def test_the_report_and_timeline_show_the_chunks(cost):
    report = render_report(cost)
    assert "| 0 | 0-1, 4-5 |" in report and "(2-1)/(2·4+2-1) = 1/9" in report
    view = timeline_view(cost)
    assert "2 chunks per stage" in view["title"]["text"]
    titles = [box["title"] for box in view["boxes"]]
    assert sum("chunk 1 (model chunk 2)" in title for title in titles) == 2 * 4  # F and B of 4 microbatches
    fills = {(box["fill"], " chunk 1 (" in box["title"]) for box in view["boxes"]}
    assert len(fills) == 4  # forward and backward, each a shade per chunk
