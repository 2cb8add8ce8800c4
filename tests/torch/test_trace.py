"""The trace comparison can fail: a model.py with one collective taken out is caught."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from dag_trace import dag_collectives, trace_problems  # noqa: E402
from fork_launch import launch  # noqa: E402
from small_models import compile_small, read_trace, write_model  # noqa: E402

REMOVED = "allreduce_mlp = all_reduce(mlp, self.tp_group)"


def test_a_removed_collective_is_caught(workdir):
    compiled = compile_small("megatron_tp8_pp2", ["tp=2", "pp=1", "layers=1", "batch=4", "microbatches=2"])
    path = write_model(compiled, workdir)
    source = path.read_text()
    assert source.count(REMOVED) == 1
    path.write_text(source.replace(REMOVED, "allreduce_mlp = mlp"))

    results = launch(path, 2, ["--check", "--trace", str(workdir / "trace")], workdir / "logs")

    assert [r.exitcode for r in results] == [1, 1]  # the gradient check fails too
    assert "check: MISMATCH" in results[0].stdout
    expected = dag_collectives(compiled.graph, 0)
    assert [event["op"] for event in expected] == ["allreduce", "allreduce"]  # after attn and after mlp
    for rank in range(2):
        events = read_trace(workdir / "trace", rank)
        forward = [event for event in events if event["phase"] == "forward" and event["microbatch"] == 0]
        assert [event["op"] for event in forward] == ["allreduce"]
        problems = trace_problems(compiled.graph, rank, events)
        assert len(problems) == 2  # one per microbatch
        assert all("forward issued" in problem for problem in problems)
