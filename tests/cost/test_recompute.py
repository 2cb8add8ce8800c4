"""Activation recomputation in the cost model, against closed forms of the model sizes:
Korthikanti et al. 2022's activations per layer, the attention core's FLOPs, and Narayanan et
al. 2021's "4 × forward" of a step with full recomputation."""

from __future__ import annotations

import pytest

from par.codegen.cost.text import format_cost
from par.dsl.cost import per_rank_comm, rank_costs
from par.dsl.cost.model import cost_of
from tests.cost.tiny import GPT, compile_source, compile_spec

FP16 = 2


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int, t: int, *, sp: bool, recompute: str) -> float:
    """Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
    Table 2: bytes of activations per layer with 16-bit activations and a GPT layer (ffn = 4h,
    dropout after the attention softmax and after both projections)."""
    if recompute == "full":
        return 2 * s * b * h
    scores = 0 if recompute == "selective" else 5 * a * s / h
    if sp:
        return s * b * h / t * (34 + scores)
    return s * b * h * (10 + 24 / t + scores / t)


def ours_from_korthikanti(s: int, b: int, h: int, a: int, t: int, *, sp: bool, recompute: str) -> float:
    """The paper's form for par's GPT block: no dropout (its two masks after the projections, one
    byte per element, replicated without sp), and fused attention keeps no score matrix (the 5as/h
    terms, which selective recomputation removes, are not there to begin with). Under sp, the
    inputs of QKV and FC1 are kept gathered, not as the sequence shards Megatron gathers again in
    backward (docs/cost.md; model.py's --regather does that), and full recomputation keeps each
    layer's input as its sequence shard."""
    if recompute == "full":
        return korthikanti_layer_bytes(s, b, h, a, t, sp=sp, recompute="full") / (t if sp else 1)
    masks = 2 * s * b * h / (t if sp else 1)
    gathered = 2 * 2 * s * b * h * (t - 1) / t if sp else 0
    return korthikanti_layer_bytes(s, b, h, a, t, sp=sp, recompute="selective") - masks + gathered


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_activations_per_layer_follow_korthikanti(recompute, sp):
    """specs/megatron_tp8_pp2.par at full size (tp 8, ffn 4h, fp16): the last stage keeps only its
    layers' activations. Within 0.5 %: par also counts the norms' statistics and the logsumexp."""
    compiled = compile_spec("megatron_tp8_pp2", f"recompute={recompute}", f"sp={'on' if sp else 'off'}")
    model, mesh = compiled.deployment.model, compiled.deployment.mesh
    b = model.batch // (mesh.dp * mesh.microbatches)
    expected = ours_from_korthikanti(model.seq, b, model.hidden, model.heads, mesh.tp, sp=sp, recompute=recompute)
    last = [cost for cost in rank_costs(compiled.graph) if cost.stage == mesh.pp - 1]
    for cost in last:
        assert cost.activation_bytes / len(cost.layers) == pytest.approx(expected, rel=0.005)


def test_full_recomputation_keeps_a_thirtieth_of_the_activations_without_it():
    """Under sp at t = 8: a layer keeps its input shard, 2sbh/t, instead of (32/t + 4(t-1)/t)·sbh."""
    kept = {
        mode: rank_costs(compile_spec("megatron_tp8_pp2", f"recompute={mode}", "sp=on").graph)[-1].activation_bytes
        for mode in ("none", "full")
    }
    assert kept["full"] * 30 == pytest.approx(kept["none"], rel=0.01)  # 2/t of (32/t + 4(t-1)/t) sbh at t = 8


def test_selective_recomputes_the_attention_core_flops():
    """4·b·s²·h/t per layer (QKᵀ and attention × V over the local heads), nothing else."""
    compiled = compile_source(GPT, "tp=4", "recompute=selective")
    model, mesh = compiled.deployment.model, compiled.deployment.mesh
    b, s, h = model.batch // mesh.microbatches, model.seq, model.hidden
    for cost in rank_costs(compiled.graph):
        assert cost.recompute_flops == len(cost.layers) * 4 * b * s * s * h // mesh.tp


def test_full_recomputation_makes_a_step_four_forwards():
    """Narayanan et al. 2021 (Megatron-LM at scale, eq. 3): with full recomputation a step costs
    four forward passes, forward + backward (2) + the forward again. The residual add after the
    last projection is not rerun (its one FLOP per element is below 1/(4h) of the layer's)."""
    compiled = compile_source(GPT, "tp=2", "pp=1", "recompute=full")
    cost = cost_of(compiled.graph, hardware=None)
    for device in cost.devices:
        total = cost.step_flops(device) + cost.recompute_step_flops(device)
        assert total / (device.flops * cost.mesh["microbatches"]) == pytest.approx(4, rel=1e-3)
        assert total / (device.flops * cost.mesh["microbatches"]) < 4
    stages = cost.estimate.stages
    assert stages.backward[0] == pytest.approx(3 * stages.forward[0], rel=1e-3)  # FLOP clock: 2F + F again


def test_no_recomputation_counts_nothing_again():
    cost = cost_of(compile_source(GPT, "tp=2").graph, hardware=None)
    assert all(device.recompute_flops == 0 for device in cost.devices)
    assert cost.estimate.stages.backward == tuple(2 * forward for forward in cost.estimate.stages.forward)


def test_full_recomputation_issues_a_layers_collectives_again_up_to_its_last_kept_tensor():
    """Megatron's layer without sp: the forward AllReduce after attention runs again in the
    backward; the one after the MLP does not (non-reentrant checkpointing stops the rerun at the
    MLP's second linear, the last op that keeps a tensor)."""
    plain, full = (compile_source(GPT, "tp=4", "pp=1", f"recompute={mode}") for mode in ("none", "full"))
    model, mesh = full.deployment.model, full.deployment.mesh
    b = model.batch // mesh.microbatches
    allreduce = 2 * (mesh.tp - 1) * b * model.seq * model.hidden * FP16 // mesh.tp
    before, after = per_rank_comm(plain.graph, scope="step"), per_rank_comm(full.graph, scope="step")
    for rank in range(mesh.world):
        assert after[rank]["allreduce"] - before[rank]["allreduce"] == mesh.microbatches * model.layers * allreduce
    marked = {data["name"] for _, data in full.graph.nodes(data=True) if data.get("recompute")}
    assert "allreduce_attn" in marked and "allreduce_mlp" not in marked and "out" not in marked


def test_the_report_shows_the_recomputed_flops_and_the_kept_activations():
    text = format_cost(cost_of(compile_source(GPT, "tp=2", "recompute=selective").graph, hardware=None))
    assert "forward FLOP run again in backward per step (recompute selective), all devices" in text
    assert "recompute selective: each attention core runs again in backward" in text
    plain = format_cost(cost_of(compile_source(GPT, "tp=2").graph, hardware=None))
    assert "run again" not in plain and "no recomputation" in plain


@pytest.mark.parametrize("sp", ["on", "off"])
def test_a_full_rerun_holds_one_layers_activations_at_its_peak(sp):
    """While a layer's backward runs, its rerun holds what the layer keeps without recomputation,
    less its input (kept anyway): peak memory counts it once beside the kept activations."""
    plain, full = (compile_spec("megatron_tp8_pp2", f"recompute={mode}", f"sp={sp}") for mode in ("none", "full"))
    mesh = full.deployment.mesh
    for before, after in zip(cost_of(plain.graph, hardware=None).devices, cost_of(full.graph, hardware=None).devices, strict=True):
        if before.stage == mesh.pp - 1:  # its layers only: no stage output kept
            layer, kept = before.activation_bytes / len(before.layers), after.activation_bytes / len(after.layers)
            assert after.rerun_bytes == pytest.approx(layer - kept, rel=1e-6)
    groups = cost_of(full.graph, hardware=None).groups
    assert all(group.memory.rerun == group.cost.rerun_bytes > 0 for group in groups)


def test_without_recomputation_nothing_is_rerun():
    cost = cost_of(compile_spec("megatron_tp8_pp2").graph, hardware=None)
    assert all(group.memory.rerun == 0 for group in cost.groups)
