"""Context parallelism in the cost model (docs/cost.md, Context parallelism)."""

from par.dsl.cost.model import spec_cost

from .tiny import LLAMA, compile_source

HARDWARE = LLAMA + "hardware h100\n"


def cost(*defines: str, text: str = HARDWARE):
    return spec_cost(compile_source(text, *defines))


def test_activations_per_device_fall_with_cp():
    # Every tensor autograd keeps is per token; the ring's blocks are passed on, not kept.
    alone = cost("cp=1", "seq=64").devices[0].activation_bytes
    for cp in (2, 4):
        assert cost(f"cp={cp}", "seq=64").devices[0].activation_bytes * cp == alone


def test_a_ring_step_sends_one_block_of_keys_and_values():
    found = cost("cp=4", "seq=64").context
    assert found is not None and found.cp == 4 and found.tokens == 16
    # batch 8 / microbatches 2 = 4 sequences; 16 tokens; kv_heads 2 / tp 2 = 1 head of K and V, head_dim 8; bf16
    assert found.step_bytes == 4 * 16 * (2 * 1 * 8) * 2
    assert found.attention_flops == 4 * found.step_flops


def test_compute_hides_the_transfer_only_when_the_block_is_big_enough():
    short = cost("cp=2", "seq=16").context
    long = cost("cp=2", "seq=65536", "batch=2", "microbatches=1", "pp=1", "layers=1").context
    assert short is not None and long is not None
    assert not short.hidden and short.exposed > 0  # a tiny block: the link's latency alone is longer
    assert long.hidden and long.exposed == 0


def test_gradients_are_reduced_over_every_part_of_the_sequence():
    found = cost("cp=2", "tp=1", "pp=1", "seq=32")
    groups = {item.group for item in found.transfers if item.phase == "gradients"}
    assert groups == {(0, 1)}  # dp 1, cp 2: the two parts of the sequence sum their gradients


def test_the_allgather_form_has_no_ring_transfers():
    found = cost("cp=2", "cp_attention=allgather", "seq=32")
    assert found.context is not None and found.context.algorithm == "allgather"
    assert not [item for item in found.transfers if item.kind == "send" and "ring" in found.graph.nodes[item.node]]
