"""--regather: under sequence parallelism, gathered norm outputs are kept as their shard and
gathered again in backward; the step still matches Reference and the forward still the DAG."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from dag_trace import trace_problems  # noqa: E402
from fork_launch import launch  # noqa: E402
from small_models import compile_small, read_trace, write_model  # noqa: E402


def test_regather_matches_reference_and_gathers_again_in_backward(workdir):
    defines = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2"]
    compiled = compile_small("llama_gqa", defines)
    path = write_model(compiled, workdir)
    counts = {}
    for option in ([], ["--regather"]):
        folder = workdir / ("regather" if option else "plain")
        results = launch(path, 4, ["--check", "--trace", str(folder), *option], folder / "logs")
        assert [r.exitcode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
        assert "check: OK" in results[0].stdout
        events = read_trace(folder, 0)
        assert trace_problems(compiled.graph, 0, events) == []

        def gathers(phase, events=events):
            return sum(1 for event in events if event["phase"] == phase and event["op"] == "allgather")

        counts[bool(option)] = (gathers("forward"), gathers("backward"))
    (forward, backward), (forward_regather, backward_regather) = counts[False], counts[True]
    assert forward == forward_regather > 0
    # each gathered norm output (before attention and before the MLP) is gathered again once
    assert backward_regather == backward + forward
