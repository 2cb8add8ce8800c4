"""A deployment's model.py run with --check --trace on every rank, held to Reference, the DAG and the cost model."""

from __future__ import annotations

from fractions import Fraction

import pytest
from dag_trace import trace_problems
from fork_launch import launch
from small_models import read_trace, write_model

from par.dsl.cost import per_rank_comm


def run_and_compare(compiled, workdir) -> None:
    """Runs --check --trace on every rank: outputs and gradients equal Reference's, each rank's
    forward collectives are the DAG's, and the whole step (backward and gradient sync included)
    sends what the cost model counts."""
    world = compiled.deployment.mesh.world
    path = write_model(compiled, workdir)
    results = launch(path, world, ["--check", "--trace", str(workdir / "trace")], workdir / "logs")
    report = "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)
    assert all(r.exitcode == 0 for r in results), report
    assert "check: OK" in results[0].stdout, report
    compare_traces(compiled, workdir / "trace")


def compare_traces(compiled, folder) -> None:
    """Each rank's trace in `folder`: its forward collectives are the DAG's, and the whole step
    sends what the cost model counts."""
    world = compiled.deployment.mesh.world
    traces = [read_trace(folder, rank) for rank in range(world)]
    counted = per_rank_comm(compiled.graph, scope="step")
    for rank, events in enumerate(traces):
        assert trace_problems(compiled.graph, rank, events) == []
        sent: dict[str, Fraction] = {}
        for event in events:
            sent[event["op"]] = sent.get(event["op"], 0) + sent_bytes(event)
        assert {kind: float(total) for kind, total in sent.items() if total} == pytest.approx(counted[rank]), rank


def sent_bytes(event: dict) -> Fraction:
    """Bytes a rank sends for one traced event, by docs/cost.md's ring formulas (T: the whole tensor)."""
    size, local = len(event["group"]), event["bytes"]
    return {
        "allreduce": Fraction(2 * (size - 1), size) * local,  # T = local
        "allgather": Fraction(size - 1) * local,  # T = size x local
        "reducescatter": Fraction(size - 1, size) * local,  # T = local
        "alltoall": Fraction(size - 1, size) * local,  # T = size x local, (n - 1) / n^2 of it
        "send": Fraction(local),
        "recv": Fraction(0),
    }[event["op"]]
