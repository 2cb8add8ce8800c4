"""ZeRO stage 1 in model.py: each data-parallel rank keeps AdamW's state and master weights of
its part only, as much as the cost model counts; --check, the trace and --steps on gloo."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from checked_run import run_and_compare  # noqa: E402
from fork_launch import free_port, launch, load_module  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

from par.dsl.cost import spec_cost  # noqa: E402

BF16_DP4 = ["heads=4", "kv_heads=2", "tp=1", "pp=1", "dp=4", "layers=2", "batch=8", "microbatches=2", "dtype=bf16", "vocab=61"]


@pytest.mark.slow  # compiles and loads a model.py (about 4 s)
def test_optimizer_state_per_rank_is_the_cost_models(workdir):
    """Measured in one process from the optimizer's own tensors (rank 0 of a dp 4 mesh: its part
    is as large as every rank's): Adam's m and v and the fp32 master weights of the part."""
    compiled = compile_small("llama_gqa", [*BF16_DP4, "zero=1"])
    model = load_module(write_model(compiled, workdir), "zero_model")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        stage = model.build_stage(SimpleNamespace(rank=0, stage=0, tp_rank=0, dp_rank=0), torch.device("cpu"), model.stage_weights(SimpleNamespace(stage=0), 0))
        buffer = model.GradientBuffer(stage)
        optimizer = model.Optimizer(stage, buffer, 1e-3)
        optimizer.adamw.step()  # AdamW makes its state at the first step: no collective
    finally:
        dist.destroy_process_group()
    adam = sum(t.numel() * t.element_size() for state in optimizer.adamw.state.values() for t in state.values() if t.dim())
    master = optimizer.weights["part"]
    assert master.dtype == torch.float32 and master.data_ptr() != optimizer.part.data_ptr()
    memory = spec_cost(compiled).groups[0].memory
    assert adam == pytest.approx(memory.optimizer, rel=0.05)
    assert master.numel() * 4 == pytest.approx(memory.master, rel=0.05)
    plain = spec_cost(compile_small("llama_gqa", BF16_DP4)).groups[0].memory
    assert memory.optimizer < plain.optimizer / 3  # a quarter, and the padding


STEP = re.compile(r"step (\d)/3: loss ([0-9.]+)")


@pytest.mark.slow  # launches model.py on 2 and 8 processes
def test_zero_1_checks_traces_and_trains_on_gloo(workdir):
    """dp 2 in fp32, then tp 2 x pp 2 x dp 2 in bf16 with a tied, padded vocabulary: gradients
    of each rank's part equal Reference's, the weights come back whole after the AllGather, the
    trace's ReduceScatter and AllGather are the cost model's; --steps trains."""
    dp2 = compile_small("megatron_tp8_pp2", ["tp=1", "pp=1", "dp=2", "layers=2", "batch=4", "microbatches=2", "zero=1"])
    run_and_compare(dp2, workdir / "dp2")
    results = launch(workdir / "dp2" / "model.py", 2, ["--steps", "3"], workdir / "steps")
    assert [r.exitcode for r in results] == [0, 0], [r.stderr for r in results]
    losses = [float(loss) for _, loss in STEP.findall(results[0].stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    mesh = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=2", "layers=2", "batch=4", "microbatches=2"]
    run_and_compare(compile_small("llama_gqa", [*mesh, "vocab=63", "tie_embeddings=true", "dtype=bf16", "zero=1"]), workdir / "mesh")
