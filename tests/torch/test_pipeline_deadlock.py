"""The pipeline schedules cannot deadlock when a send blocks until its receive is posted (NCCL).

An independent model of NCCL's point-to-point semantics runs each stage's program: a rank runs
its operations one after another; each step posts a set of sends and receives together and
ends only when every one of them has met its counterpart, which the peer must have posted in
its own current step (a send does not return until its receive is posted, nor a receive until
its send is). Messages between two ranks match in posting order, as NCCL's do, so the model also
checks that each send meets the receive meant for it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from par.codegen.pytorch.runtime import pipeline  # noqa: E402

# (op, kind, microbatch, peer stage)
Op = tuple[str, str, int, int]


def _plan(monkeypatch, stages: int, microbatches: int, schedule: str) -> list[list[list[Op]]]:
    """Each stage's steps, as the runtime posts them: the exchanges of `schedule_plan`, peers as stage numbers."""
    monkeypatch.setattr(pipeline, "PP", stages)
    monkeypatch.setattr(pipeline, "MICROBATCHES", microbatches)
    monkeypatch.setattr(pipeline, "SCHEDULE", schedule)
    programs = []
    for stage in range(stages):
        steps = [
            [(op, kind, i, stage - 1 if peer == "previous" else stage + 1) for op, kind, i, peer in item]
            for item in pipeline.schedule_plan(stage)
            if isinstance(item, list)
        ]
        programs.append(steps)
    return programs


def _old_order(monkeypatch, stages: int, microbatches: int, schedule: str) -> list[list[list[Op]]]:
    """The order before batching: a blocking receive before each action, an asynchronous send after it."""
    monkeypatch.setattr(pipeline, "PP", stages)
    monkeypatch.setattr(pipeline, "MICROBATCHES", microbatches)
    monkeypatch.setattr(pipeline, "SCHEDULE", schedule)
    programs = []
    for stage in range(stages):
        steps: list[list[Op]] = []
        for action, i in pipeline.schedule_order(stage):
            upstream, downstream = (stage - 1, stage + 1) if action == "forward" else (stage + 1, stage - 1)
            kind = "activation" if action == "forward" else "gradient"
            if 0 <= upstream < stages:
                steps.append([("recv", kind, i, upstream)])
            if 0 <= downstream < stages:
                steps.append([("send", kind, i, downstream)])  # queued behind the next receive on NCCL
        programs.append(steps)
    return programs


def run_blocking(programs: list[list[list[Op]]]) -> list[int]:
    """Runs the programs under blocking sends; returns the stages that are stuck (empty: all finished)."""
    # number every operation on its channel (sender, receiver) in posting order
    sequence: dict[tuple[int, int, int], int] = {}
    counts: dict[tuple[str, int, int], int] = {}
    meant: dict[tuple[int, int, int], tuple[str, int]] = {}
    for rank, steps in enumerate(programs):
        for s, step in enumerate(steps):
            for o, (op, kind, i, peer) in enumerate(step):
                channel = (op, rank, peer) if op == "send" else (op, peer, rank)
                sequence[rank, s, o] = counts.get(channel, 0)
                counts[channel] = counts.get(channel, 0) + 1
                meant[rank, s, o] = (kind, i)
    current = [0] * len(programs)
    matched: set[tuple[int, int, int]] = set()
    progress = True
    while progress:
        progress = False
        for rank, steps in enumerate(programs):
            if current[rank] == len(steps):
                continue
            s = current[rank]
            for o, (op, _kind, _i, peer) in enumerate(steps[s]):
                if (rank, s, o) in matched or not 0 <= peer < len(programs) or current[peer] == len(programs[peer]):
                    continue
                counterpart = "recv" if op == "send" else "send"
                for po, (pop, _, _, ppeer) in enumerate(programs[peer][current[peer]]):
                    here = (peer, current[peer], po)
                    if pop == counterpart and ppeer == rank and sequence[here] == sequence[rank, s, o]:
                        assert meant[here] == meant[rank, s, o], f"{meant[here]} met {meant[rank, s, o]}"
                        matched |= {(rank, s, o), (peer, current[peer], po)}
                        progress = True
            if all((rank, s, o) in matched for o in range(len(steps[s]))):
                current[rank] += 1
                progress = True
    return [rank for rank, steps in enumerate(programs) if current[rank] < len(steps)]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("microbatches", [1, 2, 3, 4, 5, 8])
def test_every_schedule_finishes_under_blocking_sends(monkeypatch, schedule, stages, microbatches):
    programs = _plan(monkeypatch, stages, microbatches, schedule)
    assert run_blocking(programs) == []
    # every activation and gradient between neighbours is sent once and received once
    for stage, steps in enumerate(programs):
        ops = sorted(op for step in steps for op in step)
        expected = []
        for i in range(microbatches):
            if stage > 0:
                expected += [
                    ("recv", "activation", i, stage - 1),
                    ("send", "gradient", i, stage - 1),
                ]
            if stage < stages - 1:
                expected += [
                    ("send", "activation", i, stage + 1),
                    ("recv", "gradient", i, stage + 1),
                ]
        assert ops == sorted(expected)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("microbatches", [2, 4, 8])
def test_the_unbatched_1f1b_order_deadlocks_under_blocking_sends(monkeypatch, stages, microbatches):
    stuck = run_blocking(_old_order(monkeypatch, stages, microbatches, "1f1b"))
    assert stuck, "the model must catch the deadlock of an asynchronous send followed by a blocking receive"


def test_the_model_detects_a_receive_that_no_send_meets():
    crossed = [
        [[("recv", "activation", 0, 1)], [("send", "gradient", 0, 1)]],
        [[("recv", "gradient", 0, 0)], [("send", "activation", 0, 0)]],
    ]
    assert run_blocking(crossed) == [0, 1]
    paired = [
        [[("send", "activation", 0, 1), ("recv", "gradient", 0, 1)]],
        [[("recv", "activation", 0, 0), ("send", "gradient", 0, 0)]],
    ]
    assert run_blocking(paired) == []


# -- Generation: prefill and decode steps, the sampled tokens fed back from the last stage to the first


def _decode_plan(monkeypatch, stages: int, microbatches: int, new: int) -> list[list[list[Op]]]:
    """Each stage's exchanges in generation, as the runtime posts them; an item is (kind, step * 1000 + microbatch)."""
    from par.codegen.pytorch.runtime import generation

    monkeypatch.setattr(generation, "PP", stages)
    monkeypatch.setattr(generation, "MICROBATCHES", microbatches)
    return [
        [
            [(op, kind, step * 1000 + m, peer) for op, kind, step, m, peer in item]
            for item in generation.decode_plan(stage, new)
            if isinstance(item, list)
        ]
        for stage in range(stages)
    ]


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("microbatches", [1, 2, 3, 4, 8])
def test_the_decode_schedule_finishes_under_blocking_sends(monkeypatch, stages, microbatches):
    new = 4
    programs = _decode_plan(monkeypatch, stages, microbatches, new)
    assert run_blocking(programs) == []
    items = [step * 1000 + m for step in range(new) for m in range(microbatches)]
    fed_back = [step * 1000 + m for step in range(new - 1) for m in range(microbatches)]  # the last step's are not
    for stage, steps in enumerate(programs):
        ops = sorted(op for step in steps for op in step)
        expected = [("recv", "activation", i, stage - 1) for i in items if stage > 0]
        expected += [("send", "activation", i, stage + 1) for i in items if stage < stages - 1]
        expected += [("recv", "token", i, stages - 1) for i in fed_back if stage == 0]
        expected += [("send", "token", i, 0) for i in fed_back if stage == stages - 1]
        assert ops == sorted(expected)


@pytest.mark.parametrize(("stages", "microbatches"), [(2, 4), (2, 8), (3, 6), (4, 8)])
def test_pairing_each_send_with_the_next_receive_deadlocks_the_decode_ring(stages, microbatches):
    """The training schedules' pairing (this action's send with the next one's receive) on the
    ring that generation closes (tokens from the last stage back to the first) hangs with twice
    as many microbatches in flight as stages: sends then fill the whole ring. The model must see it."""
    new = 3
    programs = []
    for stage in range(stages):
        order = [(step, m) for step in range(new) for m in range(microbatches)]
        steps: list[list[Op]] = [[("recv", "activation", 0, stage - 1)]] if stage > 0 else []
        for index, (step, m) in enumerate(order):
            exchange: list[Op] = []
            if stage < stages - 1:
                exchange.append(("send", "activation", step * 1000 + m, stage + 1))
            elif step < new - 1:
                exchange.append(("send", "token", step * 1000 + m, 0))
            if index + 1 < len(order):
                following = order[index + 1]
                if stage > 0:
                    exchange.append(("recv", "activation", following[0] * 1000 + following[1], stage - 1))
                elif following[0] > 0:
                    exchange.append(("recv", "token", (following[0] - 1) * 1000 + following[1], stages - 1))
            steps.append(exchange)
        programs.append(steps)
    assert run_blocking(programs)


# -- The interleaved schedule: model chunks round the pipeline, the last stage back to the first


def _interleaved(monkeypatch, stages: int, chunks: int, microbatches: int):
    from par.codegen.pytorch.runtime import interleaved

    monkeypatch.setattr(interleaved, "PP", stages)
    monkeypatch.setattr(interleaved, "CHUNKS", chunks)
    monkeypatch.setattr(interleaved, "MICROBATCHES", microbatches)
    return interleaved


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("chunks", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_the_interleaved_schedule_finishes_under_blocking_sends(monkeypatch, stages, chunks, groups):
    """Each message is met by the receive meant for it (kind, microbatch and chunk in the item);
    each stage runs the passes the cost model simulates, in the same order."""
    from par.dsl.cost.schedule import interleaved_order

    microbatches = groups * stages
    interleaved = _interleaved(monkeypatch, stages, chunks, microbatches)
    plans = interleaved.interleaved_plan()
    programs = [
        [[(op, f"{kind}{chunk}", i, peer) for op, kind, i, chunk, peer in item] for item in plan if isinstance(item, list)]
        for plan in plans
    ]
    assert run_blocking(programs) == []
    last = stages * chunks - 1
    for stage, plan in enumerate(plans):
        passes = [item for item in plan if not isinstance(item, list)]
        simulated = interleaved_order(stage=stage, stages=stages, microbatches=microbatches, chunks=chunks)
        assert passes == [("forward" if phase == "F" else "backward", i, c * stages + stage) for phase, i, c in simulated]
        ops = sorted(op for step in programs[stage] for op in step)
        expected = []
        for i in range(microbatches):
            for chunk in range(stage, last + 1, stages):
                if chunk > 0:
                    expected += [("recv", f"activation{chunk}", i, (chunk - 1) % stages), ("send", f"gradient{chunk - 1}", i, (chunk - 1) % stages)]
                if chunk < last:
                    expected += [("send", f"activation{chunk + 1}", i, (chunk + 1) % stages), ("recv", f"gradient{chunk}", i, (chunk + 1) % stages)]
        assert ops == sorted(expected)


@pytest.mark.parametrize(("stages", "chunks", "microbatches"), [(2, 2, 4), (3, 2, 6), (4, 2, 8)])
def test_pairing_each_send_with_the_next_pass_s_receive_deadlocks_the_interleaved_ring(monkeypatch, stages, chunks, microbatches):
    """The non-interleaved schedule's pairing, on the interleaved order, hangs once more
    microbatches are in flight than stages: the model must see what the lockstep rounds avoid."""
    interleaved = _interleaved(monkeypatch, stages, chunks, microbatches)
    programs = []
    for stage in range(stages):
        steps: list[list[Op]] = []
        owed: list[Op] = []
        for action, i, chunk in interleaved.chunk_order(stage):
            needs = [("recv", f"{kind}{c}", i, (c - 1 if kind == "activation" else c + 1) % stages) for kind, _, c in interleaved._needs(action, i, chunk)]
            if owed + needs:
                steps.append(owed + needs)
            owed = [("send", f"{kind}{c}", i, c % stages) for kind, _, c in interleaved._gives(action, i, chunk)]
        steps.append(owed)
        programs.append([step for step in steps if step])
    assert run_blocking(programs)
