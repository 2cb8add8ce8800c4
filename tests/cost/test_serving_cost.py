"""The serving cost against closed forms written here from the model's sizes (docs/cost.md, Serving)."""

from functools import cache

import pytest

from par.dsl.checks.hwcheck import builtin_hardware
from par.dsl.compiler import compile_text
from par.dsl.cost.serving import serving_cost
from par.dsl.frontend.inputs import parse_defines

H100 = builtin_hardware("h100")
LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, BATCH, SEQ = 4, 1024, 16, 4, 4096, 32000, 8, 4096
PROMPT, GENERATE = 1000, 24
LLAMA = f"""model m : llama {{ layers {LAYERS}  hidden {HIDDEN}  heads {HEADS}  kv_heads {KV_HEADS}  ffn {FFN}  vocab {VOCAB}  batch {BATCH}  seq {SEQ}  dtype bf16 }}
mesh {{ tp 2 }}
serve {{ prompt {PROMPT}  generate {GENERATE} }}
hardware h100
"""


@cache  # several tests read the same deployment
def cost_of(text=LLAMA, *defines):
    overrides, _ = parse_defines(list(defines))
    compiled = compile_text(text, "s.par", overrides)
    phases = dict(compiled.phases)
    return serving_cost(phases["prefill"].graph, phases["decode"].graph, hardware=compiled.deployment.hardware)


def ring(steps, wire_bytes, *, alpha=H100.intra_latency_us * 1e-6, beta=H100.intra_gbps * 1e9):
    return steps * alpha + wire_bytes / beta


def test_decode_step_time_is_the_bytes_read_over_bandwidth_plus_the_collectives():
    tp, head_dim, size = 2, HIDDEN // HEADS, 2  # bf16
    context = PROMPT + GENERATE
    per_layer = (
        HIDDEN * (HEADS + 2 * KV_HEADS) * head_dim // tp  # fused QKV, column-parallel
        + HIDDEN * HIDDEN // tp  # output projection, row-parallel
        + 3 * HIDDEN * FFN // tp  # gate, up, down
        + 2 * HIDDEN  # two RMSNorm scales, whole on every rank
    )
    weights = LAYERS * per_layer + HIDDEN + VOCAB // tp * HIDDEN  # final norm, head's rows
    embedding_rows = BATCH * HIDDEN  # the lookup reads one row per sequence, not the table
    kv = LAYERS * 2 * BATCH * (KV_HEADS // tp) * context * head_dim * size  # K and V, the whole allocated context
    memory = ((weights + embedding_rows) * size + kv) / (H100.hbm_gbps * 1e9)
    stream = BATCH * HIDDEN * size  # one token per sequence
    allreduces = (1 + 2 * LAYERS) * ring(2 * (tp - 1), 2 * (tp - 1) / tp * stream)  # embedding, attention, MLP
    sample = ring(tp - 1, (tp - 1) / tp * BATCH * 2 * tp * 4)  # fp32 (largest logit, index) pairs
    expected = memory + allreduces + sample
    cost = cost_of()
    device = cost.decode.slowest()
    assert device.compute_s < device.memory_s  # a decode step waits on HBM
    assert device.time_s == pytest.approx(expected, rel=1e-12)
    assert cost.tpot_s() == pytest.approx(expected, rel=1e-12)  # one stage, one microbatch
    assert cost.tokens_per_s() == pytest.approx(BATCH / expected)
    # The collectives' latency outweighs their bytes: α dominates a decode step's communication,
    # and on a model this small it outweighs the reads too.
    assert device.latency_s > 10 * device.transfer_s
    assert device.bound == "collectives"


def test_kv_cache_per_token_and_the_largest_batch_that_fits():
    cost = cost_of()
    device = cost.decode.devices[0]
    head_dim, size = HIDDEN // HEADS, 2
    per_token = LAYERS * 2 * (KV_HEADS // 2) * head_dim * size
    assert cost.kv_per_token(device) == per_token
    assert cost.kv_bytes(device) == per_token * (PROMPT + GENERATE) * BATCH
    room = H100.memory_gb * 1e9 - device.weight_bytes
    assert cost.largest_batch() == int(room // (per_token * (PROMPT + GENERATE)))
    assert cost.warnings == ()


def test_prefill_is_compute_bound_and_gives_the_time_to_first_token():
    cost = cost_of()
    device = cost.prefill.slowest()
    assert device.bound == "compute" and device.compute_s > device.memory_s
    assert cost.ttft_s() == pytest.approx(device.time_s)  # one stage, one microbatch


def test_pipeline_decode_rounds_and_their_bubble():
    # Two stages, one microbatch: the stages take turns, half of each round is idle.
    one = cost_of(LLAMA, "pp=2")
    times = one.decode.stage_times(2)
    assert one.tpot_s() == pytest.approx(sum(times))
    assert one.decode_bubble() == pytest.approx(1 - sum(times) / (2 * sum(times)))
    # Four microbatches of requests keep both stages busy: a round is four microbatches on the slowest stage.
    four = cost_of(LLAMA, "pp=2", "microbatches=4")
    times = four.decode.stage_times(2)
    assert four.tpot_s() == pytest.approx(4 * max(times))
    assert four.decode_bubble() == pytest.approx(1 - 4 * sum(times) / 2 / (4 * max(times)))  # the stages' imbalance only
    assert four.decode_bubble() < one.decode_bubble() / 5
    # Prefill: the pipeline fills, then a microbatch leaves the slowest stage each step.
    prefill = four.prefill.stage_times(2)
    assert four.ttft_s() == pytest.approx(sum(prefill) + 3 * max(prefill))


def test_a_pipelined_decode_step_sends_the_activation_on_and_the_tokens_back():
    """tp 2 x pp 2: the first stage's decode step issues the embedding's AllReduce, two per layer
    and the activation's Send to the last stage; the last stage two per layer, the sampling's
    AllGather and the Send of the tokens it sampled back to the first stage (int64 ids, one per
    sequence), which the next step embeds."""
    cost = cost_of(LLAMA, "pp=2")
    tp, size, layers = 2, 2, LAYERS // 2
    stream = BATCH * HIDDEN * size
    allreduce = ring(2 * (tp - 1), 2 * (tp - 1) / tp * stream)
    first = (1 + 2 * layers) * allreduce + ring(1, stream)
    last = 2 * layers * allreduce + ring(tp - 1, (tp - 1) / tp * BATCH * 2 * tp * 4) + ring(1, BATCH * 8)
    by_rank = {device.rank: device.comm_s for device in cost.decode.devices}
    assert [by_rank[rank] for rank in range(4)] == pytest.approx([first, first, last, last], rel=1e-12)
    # the prefill samples the first token and sends nothing back
    prefill = {device.rank: device.comm_s for device in cost.prefill.devices}
    prompt_stream = BATCH * PROMPT * HIDDEN * size
    allreduce = ring(2 * (tp - 1), 2 * (tp - 1) / tp * prompt_stream)
    assert prefill[2] == pytest.approx(2 * layers * allreduce + ring(tp - 1, (tp - 1) / tp * BATCH * 2 * tp * 4), rel=1e-12)


def test_the_prefill_head_computes_the_logits_of_the_last_position_only():
    """model.py applies the head to each sequence's last position: the prefill's last stage
    computes as many head FLOPs as a decode step's, 2 x batch x hidden x vocab / tp."""
    cost = cost_of()
    graph = cost.prefill.graph
    heads = [data["flops"] for _, data in graph.nodes(data=True) if data.get("name") == "head"]
    assert heads == [2 * BATCH * HIDDEN * VOCAB // 2] * 2


def test_a_tp_group_across_nodes_is_costed_on_the_network_and_warned_about():
    spread = cost_of(LLAMA.replace("hardware h100", "hardware h100 { devices_per_node 1 }"))
    (warning,) = spread.warnings
    assert warning.startswith("the tp group of gpu 0-1 spans nodes 0, 1 (1 devices per node)")
    device = spread.decode.slowest()
    stream = BATCH * HIDDEN * 2
    alpha, beta = H100.inter_latency_us * 1e-6, H100.inter_gbps * 1e9
    allreduces = (1 + 2 * LAYERS) * ring(2, stream, alpha=alpha, beta=beta)
    sample = ring(1, BATCH * 2 * 2 * 4 / 2, alpha=alpha, beta=beta)
    assert device.comm_s == pytest.approx(allreduces + sample)


def test_a_cache_that_does_not_fit_is_warned_about():
    cost = cost_of(LLAMA, "batch=16384", "seq=4096", "prompt=4000", "generate=96")
    assert any(w.startswith("gpu 0 (stage 0) does not fit: weights ") for w in cost.warnings)
    assert cost.largest_batch() < 16384


def test_without_hardware_the_memory_is_counted_and_no_time_given():
    cost = cost_of(LLAMA.replace("hardware h100\n", ""))
    assert cost.largest_batch() is None
    assert cost.decode.devices[0].kv_bytes > 0 and cost.decode.devices[0].time_s == 0


def test_the_profiles_carry_the_published_hbm_bandwidths():
    # NVIDIA's datasheets: H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 80GB SXM 2.0 TB/s.
    assert [builtin_hardware(name).hbm_gbps for name in ("h100", "h200", "a100")] == [3350, 4800, 2039]


def test_a_hardware_section_in_full_may_leave_out_the_hbm_bandwidth():
    custom = LLAMA.replace(
        "hardware h100",
        "hardware { peak_tflops 989  efficiency 0.5  memory_gb 80  devices_per_node 8\n"
        "  intra_gbps 450  intra_latency_us 3  inter_gbps 50  inter_latency_us 8 }",
    )
    cost = cost_of(custom)
    assert cost.hardware.hbm_gbps is None
    assert cost.decode.slowest().memory_s == 0 and cost.decode.slowest().compute_s > 0


def test_par_cost_puts_serving_specs_side_by_side_and_shows_the_roofline(tmp_path, capsys):
    from par.cli import main
    from par.dsl import units

    (tmp_path / "a.par").write_text(LLAMA)
    (tmp_path / "b.par").write_text(LLAMA.replace("tp 2", "tp 4"))
    assert main(["cost", str(tmp_path / "a.par"), str(tmp_path / "b.par")]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("time per output token (TPOT)") and " vs " not in line and "%" in line]
    a, b = cost_of().tpot_s(), cost_of(LLAMA.replace("tp 2", "tp 4")).tpot_s()
    assert units.seconds(a) in row and units.seconds(b) in row and f"({(b - a) / a * 100:+.1f}%)" in row
    assert "Side by side (serving)" in out
    decode = [line for line in out.splitlines() if line.startswith("decode   gpu ")]
    assert len(decode) == 2 and all(line.endswith("collectives") for line in decode)  # this small model's decode step waits on latency
    assert "balance point is 147.6 FLOP per byte" in out  # 989e12 × 0.5 / 3.35e12
