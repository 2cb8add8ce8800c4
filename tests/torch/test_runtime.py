"""The runtime of model.py, imported as ordinary modules: pairs, trace, schedules, ranks, ops, modes."""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback
import weakref
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from fork_launch import free_port  # noqa: E402

from par.codegen.pytorch.runtime import batches, cli, collectives, groups, ops, pairs, pipeline, regather, trace  # noqa: E402

WORLD = 2


def _pairs_on_rank(rank: int, port: int, errors: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 1
    try:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        _check_pairs(rank, dist.new_group([0, 1]))
        code = 0
    except BaseException:
        with open(f"{errors}/rank{rank}.err", "w") as out:
            out.write(traceback.format_exc())
    finally:
        os._exit(code)


def _inputs(rank: int) -> torch.Tensor:
    """Rank r's [2, 4] input: every entry different across ranks and positions."""
    return (torch.arange(8.0).reshape(2, 4) + 10 * rank).requires_grad_()


def _grad(rank: int, shape) -> torch.Tensor:
    return torch.arange(float(torch.Size(shape).numel())).reshape(shape) * (rank + 2)


def _run(function, rank: int, **kwargs):
    x = _inputs(rank)
    y = function(x, **kwargs)
    y.backward(_grad(rank, y.shape))
    return y.detach(), x.grad


def _check_pairs(rank: int, group) -> None:
    every = [_inputs(r).detach() for r in range(WORLD)]
    total = sum(every)
    ranks = range(WORLD)

    def grads(shape):
        return [_grad(r, shape) for r in ranks]

    trace.start_trace()
    partial: list[torch.Tensor] = []  # the partial sum, as a row-parallel linear leaves it

    def reduce(x, group):
        partial.append(x * 1)
        return pairs.all_reduce(partial[0], group)

    y, g = _run(reduce, rank, group=group)
    assert torch.equal(y, total) and torch.equal(g, _grad(rank, y.shape))  # backward: identity
    assert torch.equal(partial[0], total)  # reduced in place, no copy

    arrived: list[torch.Tensor] = []  # the gradient the backward is handed

    def copy(x, group):
        y = pairs.copy_to_tp(x, group)
        y.register_hook(arrived.append)
        return y

    y, g = _run(copy, rank, group=group)
    assert torch.equal(y, every[rank]) and torch.equal(g, sum(grads(y.shape)))
    assert torch.equal(arrived[0], g)  # reduced in place, no copy

    y, g = _run(pairs.all_gather, rank, dim=1, group=group)
    assert torch.equal(y, torch.cat(every, dim=1))
    assert torch.equal(g, _grad(rank, y.shape).chunk(WORLD, dim=1)[rank])

    y, g = _run(pairs.all_gather_to_tp, rank, dim=1, group=group)
    assert torch.equal(g, sum(grads(y.shape)).chunk(WORLD, dim=1)[rank])

    y, g = _run(pairs.reduce_scatter, rank, dim=1, group=group)
    assert torch.equal(y, total.chunk(WORLD, dim=1)[rank])
    assert torch.equal(g, torch.cat(grads(y.shape), dim=1))

    y, g = _run(pairs.scatter_to_tp, rank, dim=1, group=group)
    assert torch.equal(y, every[rank].chunk(WORLD, dim=1)[rank])
    assert torch.equal(g, torch.cat(grads(y.shape), dim=1))

    y, g = _run(pairs.all_to_all, rank, scatter_dim=1, gather_dim=0, group=group)
    assert torch.equal(y, torch.cat([part.chunk(WORLD, dim=1)[rank] for part in every], dim=0))
    back = torch.cat([_grad(r, y.shape).chunk(WORLD, dim=0)[rank] for r in ranks], dim=1)
    assert torch.equal(g, back)

    assert trace.TRACE is not None
    ops_seen = [event["op"] for event in trace.TRACE.events]
    assert ops_seen == [
        "allreduce",
        "allreduce",
        "allgather",
        "allgather",
        "reducescatter",
        "reducescatter",
        "allgather",
        "allgather",
        "alltoall",
        "alltoall",
    ]
    assert all(event["group"] == [0, 1] for event in trace.TRACE.events)

    # gathered along a dimension with only size-1 dimensions before it: a view of the buffer the
    # collective wrote, no copy
    sequence = (torch.arange(6.0) + 10 * rank).reshape(1, 3, 2)
    gathered = collectives._all_gather(sequence, 1, group)
    assert torch.equal(gathered, torch.cat([(torch.arange(6.0) + 10 * r).reshape(1, 3, 2) for r in ranks], dim=1))
    assert gathered._base is not None

    # --regather: the gathered tensor a linear saves is kept as its shard and gathered again in
    # backward; outputs and gradients are unchanged
    regather.TP = WORLD  # this process is a child of the test's: the change dies with it
    found = {}
    for enabled in (False, True):
        regather.set_regather(enabled)
        trace.start_trace()
        x = _inputs(rank)
        weight = (torch.arange(12.0).reshape(3, 4) / 10).requires_grad_()
        wholes: list[torch.Tensor] = []

        def layer(x, weight=weight, wholes=wholes):
            wholes.append(pairs.all_gather_to_tp(x, dim=0, group=group))
            return torch.nn.functional.linear(wholes[0], weight)  # saves the whole for the weight's gradient

        y = regather.stage_forward(layer, x)  # type: ignore[arg-type]
        alive = weakref.ref(wholes.pop())
        kept = alive() is not None
        y.backward(_grad(rank, y.shape))
        gathers = [event["op"] for event in trace.TRACE.events].count("allgather")
        found[enabled] = (y.detach(), x.grad, weight.grad, kept, gathers)
    regather.set_regather(False)
    (y, xg, wg, kept, gathers), (y2, xg2, wg2, kept2, gathers2) = found[False], found[True]
    assert torch.equal(y, y2) and torch.equal(xg, xg2) and torch.equal(wg, wg2)
    assert (kept, kept2) == (True, False)
    assert (gathers, gathers2) == (1, 2)
    assert trace.TRACE.events[0]["bytes"] == 8 * 4


def test_forward_backward_pairs_on_two_processes(workdir):
    context = multiprocessing.get_context("fork")
    port = free_port()
    processes = [
        context.Process(target=_pairs_on_rank, args=(rank, port, str(workdir)), daemon=True) for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    errors = {path.name: path.read_text() for path in workdir.glob("*.err")}
    assert not errors, errors
    assert [process.exitcode for process in processes] == [0, 0]


def _schedule(monkeypatch, stages: int, microbatches: int, schedule: str, stage: int) -> list[tuple[str, int]]:
    monkeypatch.setattr(pipeline, "PP", stages)
    monkeypatch.setattr(pipeline, "MICROBATCHES", microbatches)
    monkeypatch.setattr(pipeline, "SCHEDULE", schedule)
    return pipeline.schedule_order(stage)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("stages", "microbatches"), [(2, 4), (4, 8), (4, 2)])
def test_every_microbatch_runs_forward_then_backward_once_on_every_stage(monkeypatch, schedule, stages, microbatches):
    for stage in range(stages):
        order = _schedule(monkeypatch, stages, microbatches, schedule, stage)
        assert sorted(order) == sorted(
            [("forward", i) for i in range(microbatches)] + [("backward", i) for i in range(microbatches)]
        )
        for i in range(microbatches):
            assert order.index(("forward", i)) < order.index(("backward", i))
        backwards = [i for action, i in order if action == "backward"]
        assert backwards == sorted(backwards)


@pytest.mark.parametrize(("stages", "microbatches"), [(2, 4), (4, 8), (4, 2)])
def test_1f1b_keeps_at_most_the_stages_ahead_in_flight_and_gpipe_all(monkeypatch, stages, microbatches):
    for stage in range(stages):
        for schedule, bound in (("1f1b", min(stages - stage, microbatches)), ("gpipe", microbatches)):
            in_flight, most = 0, 0
            for action, _ in _schedule(monkeypatch, stages, microbatches, schedule, stage):
                in_flight += 1 if action == "forward" else -1
                most = max(most, in_flight)
            assert most == bound, (schedule, stage)


@pytest.mark.parametrize(("tp", "pp", "dp"), [(2, 2, 2), (4, 1, 2), (1, 3, 1)])
def test_coordinates_and_global_rank_are_inverse_and_tp_varies_fastest(monkeypatch, tp, pp, dp):
    for name, value in (("TP", tp), ("PP", pp), ("DP", dp)):
        monkeypatch.setattr(groups, name, value)
    seen = [groups.coordinates(rank) for rank in range(tp * pp * dp)]
    assert seen == sorted(seen)  # dp slowest, then stage, then tp
    assert len(set(seen)) == tp * pp * dp
    assert all(groups.global_rank(*place, 0) == rank for rank, place in enumerate(seen))


def test_group_heads_puts_each_ranks_heads_together_and_ungroup_heads_inverts_it(monkeypatch):
    monkeypatch.setattr(ops, "TP", 2)
    heads, kv_heads, head_dim = ops.HEADS, ops.KV_HEADS, ops.HEAD_DIM
    # feature f of head h of Q, K or V: 1000 * part + 10 * head + position within the head
    parts = [
        torch.tensor([1000.0 * p + 10 * h + d for h in range(n) for d in range(head_dim)])
        for p, n in enumerate((heads, kv_heads, kv_heads))
    ]
    fused = torch.cat(parts)
    grouped = ops.group_heads(fused, dim=0)
    first_rank = grouped[: fused.numel() // 2]
    assert torch.equal(first_rank, torch.cat([part[: part.numel() // 2] for part in parts]))
    assert torch.equal(ops.ungroup_heads(grouped, dim=0), fused)


def test_attention_reads_one_qkv_block_per_rank_as_the_whole_fused_qkv(monkeypatch):
    monkeypatch.setattr(ops, "TP", 2)
    generator = torch.Generator().manual_seed(0)
    width = (ops.HEADS + 2 * ops.KV_HEADS) * ops.HEAD_DIM
    qkv = torch.randn(5, 2, width, generator=generator)  # [seq, batch, features]
    whole = ops.causal_attention(qkv, heads=ops.HEADS, kv_heads=ops.KV_HEADS)
    grouped = ops.causal_attention(ops.group_heads(qkv, dim=-1), heads=ops.HEADS, kv_heads=ops.KV_HEADS, groups=2)
    torch.testing.assert_close(grouped, whole)
    # causal: the first position sees only itself, so its output is its own value (per query head's KV head)
    v = qkv[0, :, (ops.HEADS + ops.KV_HEADS) * ops.HEAD_DIM :].reshape(2, ops.KV_HEADS, ops.HEAD_DIM)
    expected = v.repeat_interleave(ops.HEADS // ops.KV_HEADS, dim=1).reshape(2, -1)
    torch.testing.assert_close(whole[0], expected)


def test_check_steps_and_trace_run_on_one_process_without_torchrun(workdir, monkeypatch, capsys):
    for name in ("MASTER_ADDR", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(trace, "TRACE", None)  # restored after the test: --trace starts one
    assert cli.main(["--check", "--steps", "2", "--trace", str(workdir), "--timeout", "60"]) == 0
    printed = capsys.readouterr().out
    assert "check: OK" in printed
    assert "step 2/2" in printed
    events = json.loads((workdir / "rank0.json").read_text())["events"]
    assert events == []  # one process: no collective at all
    assert trace.TRACE is not None


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_each_rank_draws_only_its_parts_of_the_microbatches_its_stage_uses(monkeypatch, sequence_parallel):
    for module in (batches, groups):
        monkeypatch.setattr(module, "PP", 3)
    monkeypatch.setattr(batches, "TP", 2)
    monkeypatch.setattr(batches, "SEQUENCE_PARALLEL", sequence_parallel)
    drawn: list[tuple] = []
    make = batches.make_microbatch

    def counted(kind, dp_rank, microbatch, seed):
        drawn.append((kind, dp_rank, microbatch))
        return make(kind, dp_rank, microbatch, seed)

    replica_inputs, replica_targets = batches.make_batch(1, seed=3)  # what Reference reads in --check
    monkeypatch.setattr(batches, "make_microbatch", counted)
    for stage, uses in ((0, {"inputs"}), (1, set()), (2, {"targets"})):
        place = SimpleNamespace(stage=stage, dp_rank=1, tp_rank=1, cp_rank=0)
        drawn.clear()
        inputs, targets = batches.rank_data(place, 3, torch.device("cpu"))  # type: ignore[arg-type]
        assert {kind for kind, _, _ in drawn} == uses
        assert sorted(drawn) == sorted((kind, 1, i) for kind in uses for i in range(batches.MICROBATCHES))
        for name, got, replica in (("inputs", inputs, replica_inputs), ("targets", targets, replica_targets)):
            expected = batches.microbatches(replica, 1, torch.device("cpu")) if name in uses else []
            assert len(got) == len(expected)
            for part, whole in zip(got, expected, strict=True):
                assert torch.equal(part, whole)
        if sequence_parallel and inputs:
            assert inputs[0].shape[0] == batches.SEQ // 2  # sequence-first: [seq, batch, HIDDEN]
