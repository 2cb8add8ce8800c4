"""ZeRO in the cost model: each stage's memory against Rajbhandari et al.'s closed form, and the
gradient sync's collectives against the AllReduce they replace."""

from __future__ import annotations

import pytest

from par.codegen.artifacts import not_generated
from par.dsl.cost import cost_of, per_rank_comm, rank_costs
from par.dsl.cost.accounting import RankCost, TrainingState
from par.dsl.cost.estimate import device_memory
from par.dsl.diagnostics import CompileError
from tests.cost.tiny import GPT, compile_source

# Rajbhandari et al. 2020 (ZeRO, arXiv:1910.02054), Figure 1 and Section 5.1: a 7.5B-parameter model on 64 GPUs
# with mixed-precision Adam, 2 + 2 + K bytes per parameter (K = 12: fp32 master weights, momentum,
# variance): 120 GB per GPU without ZeRO, 31.4 GB with P_os, 16.6 GB with P_os+g, 1.9 GB with P_os+g+p.
PSI, N_D = 7_500_000_000, 64
PAPER_GB = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
PAPER_STATE = TrainingState(weights=2, grads=2, master=4, optimizer=8)


PAPER_GRADS_GB = {0: 2 * PSI / 1e9, 1: 2 * PSI / 1e9, 2: 2 * PSI / N_D / 1e9, 3: 2 * PSI / N_D / 1e9}


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_each_stage_keeps_what_rajbhandari_et_al_count(zero):
    """Weights, master weights and Adam state as the paper counts them. The gradients as
    docs/cost.md's ZeRO table has model.py keep them (tests/torch/test_zero.py measures the code):
    the paper's from zero 0, then the fp32 part they are reduced into, 4 bytes per parameter of the
    part, beside the whole 2-byte buffer at zero 1 and alone from zero 2."""
    part = -(-PSI // N_D)
    device = RankCost(rank=0, stage=0, layers=(0,), params=PSI, flops=0, activation_bytes=0, shard=part)
    mesh = {"schedule": "1f1b", "pp": 1, "microbatches": 1, "zero": zero}
    memory = device_memory(device, PAPER_STATE, mesh)  # type: ignore[arg-type]
    assert (memory.total - memory.grads) / 1e9 == pytest.approx(PAPER_GB[zero] - PAPER_GRADS_GB[zero], abs=0.05)
    table = {0: PSI * 2, 1: PSI * 2 + part * 4, 2: part * 4, 3: part * 4}
    assert memory.grads == table[zero]


def test_zero_shards_master_weights_and_adam_state_over_data_parallel_ranks():
    plain = cost_of(compile_source(GPT, "tp=2", "pp=1", "dp=4").graph, hardware=None)
    zero1 = cost_of(compile_source(GPT, "tp=2", "pp=1", "dp=4", "zero=1").graph, hardware=None)
    zero3 = cost_of(compile_source(GPT, "tp=2", "pp=1", "dp=4", "zero=3").graph, hardware=None)
    before, after, all_sharded = plain.groups[0].memory, zero1.groups[0].memory, zero3.groups[0].memory
    params = plain.groups[0].cost.params
    part = -(-params // 4)
    assert after.weights == before.weights
    # the whole fp32 buffer, and the fp32 part it is reduced into (model.py's GradientBuffer.main)
    assert after.grads == before.grads + part * 4
    assert after.master == part * 4 and after.optimizer == part * 8  # fp16 model: fp32 master, Adam m and v
    assert all_sharded.weights == part * 2 and all_sharded.grads == part * 4


def test_zero_1_replaces_the_allreduce_with_reducescatter_and_allgather_of_the_same_volume():
    """In fp32 (gradients and weights the same size) a ReduceScatter and an AllGather send what the
    AllReduce sent: 2(n-1)/n of the gradients, as in ZeRO's Section 7. Zero 2 reduce-scatters
    each microbatch's gradients in its backward: once per microbatch."""
    args = ("tp=1", "pp=1", "dp=4", "dtype=fp32", "hidden=64", "heads=8", "ffn=256", "microbatches=2")
    plain = per_rank_comm(compile_source(GPT, *args).graph, scope="step")
    for zero, scatters in ((1, 1), (2, 2)):
        sharded = per_rank_comm(compile_source(GPT, *args, f"zero={zero}").graph, scope="step")
        for rank, kinds in sharded.items():
            assert "allreduce" not in kinds
            assert kinds["reducescatter"] == scatters * kinds["allgather"]
            assert kinds["allgather"] * 2 == pytest.approx(plain[rank]["allreduce"], rel=1e-6)


def test_zero_3_gathers_every_layers_weights_in_forward_and_backward_of_each_microbatch():
    args = ("tp=1", "pp=1", "dp=2", "dtype=fp32", "microbatches=2")
    compiled = compile_source(GPT, *args, "zero=3")
    params = rank_costs(compiled.graph)[0].params
    forward = per_rank_comm(compiled.graph, scope="microbatch")[0]
    step = per_rank_comm(compiled.graph, scope="step")[0]
    # (n - 1)/n of each layer's fp32 weights per gather, n = 2; a layer's weights split evenly here.
    assert forward["allgather"] == pytest.approx(params * 4 / 2, rel=1e-3)
    assert step["allgather"] == pytest.approx(2 * 2 * params * 4 / 2, rel=1e-3)  # 2 microbatches x (forward + backward)
    assert step["reducescatter"] == pytest.approx(2 * params * 4 / 2, rel=1e-3)  # each backward
    assert "allreduce" not in step


def test_zero_above_1_and_out_of_range_are_said():
    with pytest.raises(CompileError) as caught:
        compile_source(GPT, "dp=2", "zero=4")
    (error,) = [d for d in caught.value.diagnostics if d.is_error]
    assert error.message == "zero must be 0, 1, 2 or 3 (the ZeRO stage), not 4"
    text = GPT.replace("microbatches 2", "microbatches 2  zero 1")
    (warning,) = compile_source(text).warnings
    assert "zero 1 has no effect: dp is 1" in warning.message
    line = text.splitlines()[warning.span.line - 1]
    assert line[warning.span.col - 1 :].startswith("1 }")  # at the value the mesh gives zero


def test_model_py_is_generated_for_zero_1_and_2_and_said_not_generated_for_3():
    for zero in (1, 2):
        assert not_generated(compile_source(GPT, "dp=2", f"zero={zero}").deployment) is None
        assert not_generated(compile_source(GPT, "tp=1", "pp=1", "cp=2", "seq=16", f"zero={zero}").deployment) is None
    for mesh in (("dp=2",), ("tp=1", "pp=1", "cp=2", "seq=16")):
        why = not_generated(compile_source(GPT, *mesh, "zero=3").deployment)
        assert why is not None and "zero 3" in why


def test_fp32_zero_2_counts_the_copy_of_its_part_that_adamw_updates():
    """fp32 weights are their own master weights; under zero 2 model.py updates a copy of the
    rank's part of them (docs/pytorch.md), so the master column holds 4 bytes of that part."""
    args = ("tp=1", "pp=1", "dp=2", "dtype=fp32")
    for zero, master in ((0, False), (1, False), (2, True)):
        group = cost_of(compile_source(GPT, *args, f"zero={zero}").graph, hardware=None).groups[0]
        part = -(-group.cost.params // 2)
        assert group.memory.master == (part * 4 if master else 0)


def test_the_report_says_the_zero_stage_and_what_it_shards():
    from par.codegen.cost.report import sections
    from par.codegen.summary import mesh_line

    compiled = compile_source(GPT, "dp=2", "zero=2")
    assert mesh_line(compiled.graph.graph, drawing=False).endswith(", zero 2")
    text = "\n".join(note for section in sections(cost_of(compiled.graph, hardware=None)) for note in section.notes)
    assert "zero 2: each device keeps its 1/n share of the gradients, master weights and Adam's m and v" in text
    assert "at zero 2 the ReduceScatter runs in each microbatch's backward" in text


def test_with_experts_zero_shards_their_state_over_the_ranks_holding_the_same_experts():
    """dp 4, ep 2: the dense parameters' state over the 4 data-parallel ranks, each expert's over
    the 2 ranks holding the same experts (docs/language.md, ZeRO)."""
    from par.dsl.checks.deployment import Mesh
    from par.dsl.cost.accounting import held_params
    from tests.cost.tiny import compile_spec

    small = ("layers=2", "hidden=64", "heads=4", "kv_heads=2", "ffn=128", "vocab=64", "batch=8", "seq=8", "tp=1", "pp=1", "dp=4", "ep=2", "microbatches=1")
    compiled = compile_spec("mixtral_8x7b", *small, "zero=1")
    held = held_params(compiled.graph, Mesh.from_attributes(compiled.graph.graph["mesh"]))[0]
    assert held.experts and held.dense
    device = rank_costs(compiled.graph)[0]
    assert device.shard == -(-held.dense // 4) + -(-held.experts // 2)
    sync = per_rank_comm(compiled.graph, scope="step")[0]
    # Dense: 3/4 of the padded fp32 gradients; experts: 1/2 of theirs (dispatch and combine aside).
    assert sync["reducescatter"] == pytest.approx(3 * -(-held.dense // 4) * 4 + -(-held.experts // 2) * 4)


def test_zero_in_a_serving_spec_is_said_to_have_no_effect():
    from tests.cost.tiny import compile_spec

    compiled = compile_spec("baseline_tp8_pp2_serve", "layers=2", "hidden=64", "heads=8", "tp=2", "pp=1", "dp=2", "zero=1")
    assert [w.message for w in compiled.warnings if "zero" in w.message] == ["zero 1 has no effect in a serving spec: it shards training state"]
