"""AllGathers whose backward keeps this rank's part instead of a ReduceScatter of zeros
(par.dsl.lowering.backward), run on two gloo processes against the unsharded Reference.

The proof is held to the gradient check both ways: where the compiler elides the ReduceScatter
the traced backward has none and the gradients still match, and where it keeps one (causal
attention over a sequence split mixes the ranks' parts) forcing the elision breaks the check.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from fork_launch import launch  # noqa: E402
from small_models import compile_small, compile_source, read_trace, write_model  # noqa: E402

from par.dsl.lowering import backward  # noqa: E402

BASELINE = ("baseline_tp8_pp2", ["tp=2", "pp=1", "layers=2", "batch=4", "microbatches=2"])
# Grouped-query attention over gathered per-rank QKV blocks: each rank's query heads read only
# its own KV heads, so attention keeps the ranks' parts apart here too.
GQA_GATHERED = """
    model m : llama { layers 2  hidden 64  heads 4  kv_heads 2  ffn 256  batch 4  seq 8  dtype fp32 }
    mesh { tp 2  microbatches 2 }
    place allgather after qkv
"""

# Gathered along seq, then causal attention: each rank's positions read every earlier
# position, so rank 1's loss depends on rank 0's part and the gradients must be summed.
ATTENTION_OVER_SEQUENCE = """
    block sa(x) {
      n = rmsnorm(x)
      qkv = linear(n, 3 * hidden, replicated)
      g = allgather(qkv)
      a = attention(g)
      out = add(x, a)
      return out
    }
    model m : sa { layers 2  hidden 64  heads 4  batch 4  seq 8  dtype fp32 }
    mesh { tp 2  microbatches 2  sp }
"""


def _check(compiled, workdir) -> tuple[list, list[list[dict]]]:
    """Runs --check --trace on every rank: (rank results, each rank's traced events)."""
    world = compiled.deployment.mesh.world
    path = write_model(compiled, workdir)
    results = launch(path, world, ["--check", "--trace", str(workdir / "trace")], workdir / "logs")
    traces = [read_trace(workdir / "trace", rank) for rank in range(world)] if all(r.exitcode == 0 for r in results) else []
    return results, traces


def _backward_ops(events: list[dict]) -> set[str]:
    return {event["op"] for event in events if event["phase"] == "backward"}


def _report(results) -> str:
    return "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)


def test_the_baselines_traced_backward_has_no_reduce_scatter_and_matches_the_reference(workdir):
    compiled = compile_small(*BASELINE)
    assert {step.name for step in compiled.program.steps if step.backward_reason} == {"allgather_qkv", "allgather_mlp"}
    results, traces = _check(compiled, workdir)
    assert all(r.exitcode == 0 for r in results), _report(results)
    assert "check: OK" in results[0].stdout
    for events in traces:
        assert "reducescatter" not in {event["op"] for event in events}
        assert _backward_ops(events) == {"allreduce"}  # the QKV and FC1 inputs' gradients


def test_gathered_grouped_query_attention_has_no_reduce_scatter_and_matches_the_reference(workdir):
    compiled = compile_source(GQA_GATHERED)
    assert [step.name for step in compiled.program.steps if step.backward_reason] == ["allgather_qkv"]
    results, traces = _check(compiled, workdir)
    assert all(r.exitcode == 0 for r in results), _report(results)
    assert "check: OK" in results[0].stdout
    assert all("reducescatter" not in {event["op"] for event in events} for events in traces)


def test_the_baseline_with_its_reduce_scatters_kept_gives_the_same_check(workdir, monkeypatch):
    # the elision is an optimisation, not a change of math: kept, the ReduceScatters run and sum zeros
    monkeypatch.setattr(backward, "_own_part_only", lambda gather, region, steps: None)
    compiled = compile_small(*BASELINE)
    results, traces = _check(compiled, workdir)
    assert all(r.exitcode == 0 for r in results), _report(results)
    assert "check: OK" in results[0].stdout
    for events in traces:
        assert _backward_ops(events) == {"allreduce", "reducescatter"}


def test_attention_over_a_sequence_split_keeps_the_reduce_scatter_that_the_check_needs(workdir, monkeypatch):
    kept = compile_source(ATTENTION_OVER_SEQUENCE)
    gather = next(step for step in kept.program.steps if step.op == "allgather")
    assert (gather.pair, gather.backward_reason) == ("all_gather_to_tp", None)
    results, traces = _check(kept, workdir / "kept")
    assert all(r.exitcode == 0 for r in results), _report(results)
    assert all("reducescatter" in _backward_ops(events) for events in traces)

    monkeypatch.setattr(backward, "_own_part_only", lambda gather, region, steps: "forced")
    forced = compile_source(ATTENTION_OVER_SEQUENCE)
    assert next(step.pair for step in forced.program.steps if step.op == "allgather") == "all_gather"
    results, _ = _check(forced, workdir / "forced")
    assert [r.exitcode for r in results] == [1, 1], _report(results)
    assert "check: MISMATCH" in results[0].stdout
