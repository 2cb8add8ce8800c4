"""ZeRO stages 1 and 2 in model.py: each data-parallel rank keeps AdamW's state and master weights of
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


@pytest.mark.slow  # compiles and loads a model.py (about 4 s each)
@pytest.mark.parametrize(("zero", "grads"), [(1, "fp32"), (1, "model"), (2, "fp32"), (2, "model")])
def test_optimizer_state_per_rank_is_the_cost_models(workdir, zero, grads):
    """Measured in one process from the optimizer's own tensors (rank 0 of a dp 4 mesh: its part
    is as large as every rank's): Adam's m and v and the fp32 master weights of the part, and
    with zero 2 the gradients, of which the buffer holds the part only."""
    compiled = compile_small("llama_gqa", [*BF16_DP4, f"zero={zero}", f"grad_dtype={grads}"])
    model = load_module(write_model(compiled, workdir), f"zero{zero}_{grads}_model")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        place = SimpleNamespace(rank=0, stage=0, tp_rank=0, dp_rank=0)
        stage = model.build_stage(place, torch.device("cpu"), model.stage_weights(place, 0))
        buffer = model.GradientBuffer(stage)
        optimizer = model.Optimizer(stage, buffer, 1e-3)
        optimizer.adamw.step()  # AdamW makes its state at the first step: no collective
    finally:
        dist.destroy_process_group()
    adam = sum(t.numel() * t.element_size() for state in optimizer.adamw.state.values() for t in state.values() if t.dim())
    (master,) = optimizer.weights.values()
    assert master.dtype == torch.float32 and all(master.data_ptr() != p.data_ptr() for p in stage.parameters())
    memory = spec_cost(compiled).groups[0].memory
    assert adam == pytest.approx(memory.optimizer, rel=0.05)
    assert master.numel() * 4 == pytest.approx(memory.master, rel=0.05)
    kept = {tensor.data_ptr(): tensor for tensor in (buffer.flat, buffer.main)}.values()
    held = sum(tensor.numel() * tensor.element_size() for tensor in kept)
    # zero 1: the whole buffer and the fp32 part it is reduced into; zero 2: that part only
    assert held == pytest.approx(memory.grads, rel=0.05)
    plain = spec_cost(compile_small("llama_gqa", BF16_DP4)).groups[0].memory
    assert memory.optimizer < plain.optimizer / 3  # a quarter, and the padding
    assert (memory.grads < plain.grads / 3) == (zero == 2)


STEP = re.compile(r"step (\d)/3: loss ([0-9.]+)")
GATHER = "rows = gathered.view(region.parts, -1)  # rank r's parts"
MESH = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=2", "layers=2", "batch=4", "microbatches=2"]


@pytest.mark.slow  # launches model.py on 2, 2, 2, 2 and 8 processes
def test_zero_1_and_2_check_trace_and_train_on_gloo(workdir):
    """Gradients of each rank's part equal Reference's, the weights come back whole after the
    AllGather, the trace's ReduceScatters and AllGathers are the cost model's (zero 1 at dp 2;
    zero 2 at tp 2 x pp 2 x dp 2 in bf16 with sequence parallelism and a tied, padded
    vocabulary), and --steps trains as without ZeRO (zero 2 at dp 2); parts gathered into the
    wrong places fail the check."""
    dp2 = ["tp=1", "pp=1", "dp=2", "layers=2", "batch=4", "microbatches=2"]
    run_and_compare(compile_small("megatron_tp8_pp2", [*dp2, "zero=1"]), workdir / "zero1")
    path = write_model(compile_small("megatron_tp8_pp2", [*dp2, "zero=2"]), workdir / "zero2")
    results = launch(path, 2, ["--check", "--steps", "3"], workdir / "steps")
    assert [r.exitcode for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    assert "check: OK" in results[0].stdout and "gave every rank its weights back" in results[0].stdout
    losses = [float(loss) for _, loss in STEP.findall(results[0].stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # The oracle: AdamW on whole, AllReduced gradients (zero 0) takes the same steps in fp32.
    plain = write_model(compile_small("megatron_tp8_pp2", dp2), workdir / "zero0")
    unsharded = launch(plain, 2, ["--steps", "3"], workdir / "steps0")
    assert [float(loss) for _, loss in STEP.findall(unsharded[0].stdout)] == pytest.approx(losses, rel=1e-5)
    # The check can fail: each rank's parts gathered in the wrong order give wrong weights.
    source = path.read_text()
    assert source.count(GATHER) == 1
    path.write_text(source.replace(GATHER, "rows = gathered.view(region.parts, -1).flip(0)"))
    broken = launch(path, 2, ["--check"], workdir / "broken")
    assert [r.exitcode for r in broken] == [1, 1]
    assert "changed some rank's weights" in broken[0].stdout and "check: MISMATCH" in broken[0].stdout
    mesh = compile_small("llama_gqa", [*MESH, "vocab=63", "tie_embeddings=true", "dtype=bf16", "zero=2"])
    run_and_compare(mesh, workdir / "mesh")


CP_MESH = ["kv_heads=2", "layers=2", "batch=4", "microbatches=2", "vocab=64", "seq=16"]


@pytest.mark.slow  # launches model.py on 2 and 4 processes
def test_zero_shards_over_the_context_parallel_ranks_too(workdir):
    """Under cp the ranks holding the parts of a sequence add up the same gradients: ZeRO shards
    over dp x cp. zero 2 at cp 2 (its only gradient group: dp 1) and zero 1 at dp 2 x cp 2 with
    tp 2, ring attention and sequence parallelism: each rank's part equals Reference's, and the
    trace's ReduceScatters and AllGathers over the gradient group are the cost model's."""
    cp2 = compile_small("llama_gqa", [*CP_MESH, "tp=1", "cp=2", "pp=1", "dp=1", "zero=2"])
    assert cost_parts(cp2) == 2
    run_and_compare(cp2, workdir / "cp2")
    both = compile_small("llama_gqa", [*CP_MESH, "tp=2", "cp=2", "pp=1", "dp=2", "batch=8", "zero=1"])
    assert cost_parts(both) == 4
    run_and_compare(both, workdir / "dp2cp2")


def cost_parts(compiled) -> int:
    """How many parts the cost model cuts a device's training state into."""
    device = spec_cost(compiled).groups[0].cost
    return round(device.params / device.shard)
