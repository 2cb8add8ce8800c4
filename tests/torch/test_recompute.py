"""Activation recomputation in model.py: --check against Reference and the traces against the DAG
and the cost model, for `recompute selective` and `recompute full`, in one launch of four ranks
(tp 2 with sequence parallelism × pp 2 under 1F1B)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from checked_run import compare_traces  # noqa: E402
from fork_launch import free_port, launch, load_module  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

LAYOUT = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "schedule=1f1b", "sp=on"]
MODES = ("selective", "full")


def test_recomputed_layers_match_reference_and_send_what_the_cost_model_counts(workdir):
    compiled = {mode: compile_small("llama_gqa", [*LAYOUT, f"recompute={mode}"]) for mode in MODES}
    paths = {mode: write_model(each, workdir / mode) for mode, each in compiled.items()}
    assert "x = recomputed(layer, x)" in paths["full"].read_text()
    assert "recomputed(causal_attention, " in paths["selective"].read_text()
    ports = {mode: free_port() for mode in MODES}
    # torch.utils.checkpoint's first call imports torch._dynamo (seconds): once here, not in every forked rank.
    import torch._dynamo  # noqa: F401

    def both(argv: list[str]) -> int:
        for mode in MODES:  # one process group after the other, each on its own port
            os.environ["MASTER_PORT"] = str(ports[mode])
            code = load_module(paths[mode], f"recompute_{mode}").main(["--check", "--trace", str(workdir / mode / "trace")])
            if code:
                return code
        return 0

    results = launch(both, compiled["full"].deployment.mesh.world, [], workdir / "logs")
    report = "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)
    assert all(r.exitcode == 0 for r in results), report
    assert results[0].stdout.count("check: OK") == len(MODES), report
    for mode in MODES:
        compare_traces(compiled[mode], workdir / mode / "trace")
