"""--steps trains: the printed loss falls, and each step reports its time and throughput."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from fork_launch import launch  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

STEP = re.compile(r"step (\d+)/5: loss ([0-9.]+), [0-9.]+ ms, [0-9,]+ tokens/s")


def test_steps_print_a_falling_loss_and_throughput(workdir):
    defines = ["heads=4", "kv_heads=2", "tp=2", "pp=1", "dp=1", "layers=2", "batch=4", "microbatches=2"]
    compiled = compile_small("llama_gqa", defines)
    results = launch(write_model(compiled, workdir), 2, ["--steps", "5"], workdir / "logs")
    assert [r.exitcode for r in results] == [0, 0], [r.stderr for r in results]
    steps = STEP.findall(results[0].stdout)  # rank 0: first rank of the last (only) stage
    assert [int(step) for step, _ in steps] == [1, 2, 3, 4, 5]
    losses = [float(loss) for _, loss in steps]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]
    assert "median step" in results[0].stdout
    assert results[1].stdout == ""
