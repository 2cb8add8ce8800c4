"""The alpha-beta model, compute time, the step estimate and the memory-fit check."""

from __future__ import annotations

import pytest

from par.codegen.cost.report import warnings
from par.dsl import units
from par.dsl.checks.hwcheck import builtin_hardware
from par.dsl.cost import cost_of
from par.dsl.cost.accounting import Transfer
from par.dsl.cost.estimate import Clock
from tests.cost.tiny import GPT, compile_source

H100 = builtin_hardware("h100")


def test_ring_allreduce_within_a_node():
    clock = Clock(H100)
    group = tuple(range(8))
    item = Transfer("forward", "allreduce", None, group, group, 7e9)
    expected = 2 * 7 * H100.intra_latency_us * 1e-6 + 7e9 / (H100.intra_gbps * 1e9)
    assert clock.transfer(item) == pytest.approx(expected)


def test_groups_that_span_nodes_use_the_inter_node_links():
    clock = Clock(H100)
    group = (0, 8)  # data-parallel pair across two 8-device nodes
    item = Transfer("gradients", "allgather", None, group, group, 1e9)
    assert clock.transfer(item) == pytest.approx(H100.inter_latency_us * 1e-6 + 1e9 / (H100.inter_gbps * 1e9))
    send = Transfer("forward", "send", None, (7, 8), (7,), 1e6)
    assert clock.transfer(send) == pytest.approx(H100.inter_latency_us * 1e-6 + 1e6 / (H100.inter_gbps * 1e9))


def test_compute_runs_at_the_stated_efficiency():
    assert Clock(H100).compute(989e12) == pytest.approx(1 / H100.efficiency)


def test_single_device_step_is_forward_plus_twice_forward():
    compiled = compile_source(GPT, "tp=1", "pp=1", "microbatches=1")
    cost = cost_of(compiled.graph, hardware=H100)
    flops = cost.devices[0].flops
    assert cost.estimate.step == pytest.approx(3 * flops / (H100.peak_tflops * 1e12 * H100.efficiency))
    assert cost.estimate.bubble == pytest.approx(0)


def test_step_counts_the_gradient_allreduce():
    compiled = compile_source(GPT, "tp=1", "pp=1", "dp=2", "microbatches=1")
    cost = cost_of(compiled.graph, hardware=H100)
    params_bytes = cost.devices[0].params * 4  # fp32 gradients
    sync = 2 * H100.intra_latency_us * 1e-6 + params_bytes / (H100.intra_gbps * 1e9)  # n = 2: 2 steps, half sent twice
    assert cost.estimate.gradient_sync == pytest.approx(sync)
    assert cost.estimate.step == pytest.approx(cost.estimate.pipeline + sync)


def test_critical_path_of_a_microbatch_is_every_stage_in_turn():
    compiled = compile_source(GPT, "tp=2", "pp=2", "hidden=1024", "seq=512")
    cost = cost_of(compiled.graph, hardware=H100)
    times = cost.estimate.stages
    assert cost.estimate.microbatch_latency == pytest.approx(sum(times.forward) + sum(times.links))


def test_a_deployment_that_does_not_fit_is_flagged_with_numbers():
    text = GPT.replace("hidden 64", "hidden 16384").replace("ffn 256", "ffn 65536").replace("seq 16", "seq 8192")
    text += "hardware h100\n"
    compiled = compile_source(text, "layers=32")
    cost = cost_of(compiled.graph, hardware=compiled.deployment.hardware)
    found = warnings(cost)
    model, mesh = compiled.deployment.model, compiled.deployment.mesh
    # The training state alone (16 B per parameter; 12h^2 per layer, split over tp) is far above
    # 80 GB on every device, so every stage's devices get one warning, in stage order.
    params = model.layers // mesh.pp * 12 * model.hidden**2 // mesh.tp
    assert params * 16 > 80e9
    expected = [f"gpu {units.ranges(mesh.stage_ranks(stage))} (stage {stage}) does not fit" for stage in range(mesh.pp)]
    assert [line.split(":")[0] for line in found] == expected
    memory = cost.too_big()[0].memory
    assert memory.total > 80e9
    assert "does not fit" in found[0] and "80 GB" in found[0] and f"{memory.in_flight} x" in found[0]


def test_a_small_deployment_fits_and_says_nothing():
    compiled = compile_source(GPT + "hardware h100\n")
    assert warnings(cost_of(compiled.graph, hardware=compiled.deployment.hardware)) == []


def test_gpipe_and_1f1b_share_the_bubble_but_not_the_memory():
    gpipe = cost_of(compile_source(GPT, "schedule=gpipe", "pp=2", "microbatches=4").graph, hardware=None)
    one = cost_of(compile_source(GPT, "schedule=1f1b", "pp=2", "microbatches=4").graph, hardware=None)
    assert gpipe.estimate.bubble == pytest.approx(one.estimate.bubble) == pytest.approx(1 / 5)
    for a, b in zip(gpipe.groups, one.groups, strict=True):
        assert a.memory.in_flight == 4 and b.memory.in_flight == 2 - b.cost.stage
        assert a.memory.activations > b.memory.activations


def test_stages_of_different_sizes_show_imbalance():
    cost = cost_of(compile_source(GPT, "pp=2", "stages=0..2, 3..3", "microbatches=4").graph, hardware=None)
    forward = cost.estimate.stages.forward
    assert forward[0] == pytest.approx(3 * forward[1])
    assert cost.estimate.bubble > 1 / 5
