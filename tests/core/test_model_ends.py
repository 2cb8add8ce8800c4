"""The model's ends in the DAG and the cost model, held to closed forms.

With `vocab V` a model gains V·H embedding parameters (and V·H more for an untied head,
max_positions·H for learned positions, the final norm's), split over tp by vocabulary rows
(padded to a multiple of tp); the head costs 2·b·s·H·V/tp FLOPs per device of the last stage.
"""

from __future__ import annotations

import pytest

from par.dsl.cost.accounting import model_parameters, rank_costs, transfers
from par.dsl.dag import ids
from par.dsl.dag.validate import validate
from par.dsl.diagnostics import CompileError
from tests.cost.tiny import SPECS, compile_source

GPT = """
model m : gpt { layers 2  hidden 64  heads 4  ffn 256  batch 8  seq 16  vocab 101  dtype fp32 }
mesh { tp 2  pp 2  microbatches 2 }
"""
H, V, B, S = 64, 101, 8 // 2, 16  # a microbatch holds B sequences


def _without_vocab(*defines: str):
    """The same model and mesh without a vocabulary (the settings of the ends left out)."""
    kept = [define for define in defines if define.split("=")[0] not in ("tie_embeddings", "positions", "max_positions")]
    return compile_source(GPT.replace("vocab 101  ", ""), *kept)


@pytest.mark.parametrize("sp", ["off", "on"])
def test_distinct_parameters_gain_the_embedding_head_positions_and_final_norm(sp):
    base = model_parameters(_without_vocab(f"sp={sp}").graph)
    untied = model_parameters(compile_source(GPT, f"sp={sp}").graph)
    padded = 102  # 101 rounded up to a multiple of tp 2
    assert untied - base == 2 * padded * H + 2 * H  # embedding, head, layernorm's weight and bias
    tied = compile_source(GPT, f"sp={sp}", "tie_embeddings=true", "positions=learned", "max_positions=32")
    assert model_parameters(tied.graph) - base == padded * H + 32 * H + 2 * H  # the head's copy is not counted


def test_llama_spec_counts_the_embedding_and_head():
    """The llama spec's missing 1.05 G parameters: embedding and head, 128256 x 4096 each."""
    text = (SPECS / "llama_gqa.par").read_text()
    with_ends = model_parameters(compile_source(text, name="llama_gqa.par").graph)
    without = model_parameters(compile_source(text.replace("vocab 128256", ""), name="llama_gqa.par").graph)
    assert with_ends - without == 2 * 128256 * 4096 + 4096  # and the final RMSNorm's weight
    assert round((with_ends - without) / 1e9, 2) == 1.05


@pytest.mark.parametrize(("defines", "first", "last"), [
    ((), 51 * H, 51 * H + 2 * H),  # rows of embedding; rows of head + final norm
    (("tie_embeddings=true",), 51 * H, 51 * H + 2 * H),  # the last stage keeps its own copy
    (("tie_embeddings=true", "pp=1", "layers=2"), None, None),
])
def test_per_device_parameters_of_the_ends(defines, first, last):
    graph = compile_source(GPT, *defines).graph
    base = rank_costs(_without_vocab(*defines).graph)
    costs = rank_costs(graph)
    if first is None:  # one stage, tied: one matrix serves both ends
        assert costs[0].params - base[0].params == 51 * H + 2 * H
        return
    assert costs[0].params - base[0].params == first
    assert costs[2].params - base[2].params == last


def test_head_and_loss_flops_on_the_last_stage():
    graph = compile_source(GPT).graph
    rows = 102 // 2
    head = graph.nodes[ids.end_id("head", 2)]
    assert head["flops"] == 2 * B * S * H * rows
    assert head["out_shape"] == (B, S, rows)  # no rank holds logits over the whole vocabulary
    assert graph.nodes[ids.end_id("loss_max", 2)]["flops"] == B * S * rows
    assert graph.nodes[ids.end_id("loss_sum", 2)]["flops"] == 3 * B * S * rows
    extra = rank_costs(graph)[2].flops - rank_costs(_without_vocab().graph)[2].flops
    norm = 5 * B * S * H
    assert extra == norm + 2 * B * S * H * rows + B * S * rows + 3 * B * S * rows + 2 * B * S


@pytest.mark.parametrize("sp", ["off", "on"])
def test_collectives_of_the_ends(sp):
    graph = compile_source(GPT, f"sp={sp}").graph
    assert validate(graph) == []
    embed = "reducescatter_embed" if sp == "on" else "allreduce_embed"
    assert graph.nodes[embed]["devices"] == [0, 1]
    assert sorted(graph.predecessors(embed)) == [ids.end_id("embed", 0), ids.end_id("embed", 1)]
    assert graph.nodes[embed]["in_placement"] == "P"
    for name in ("allreduce_loss_max", "allreduce_loss_sum"):
        assert graph.nodes[name]["devices"] == [2, 3]
        assert graph.nodes[name]["dtype"] == "fp32"
    assert ("allgather_final_norm" in graph) == (sp == "on")
    # the loss reads the logits and the largest logit: each edge holds its own operand's shape
    loss_sum = graph.nodes[ids.end_id("loss_sum", 2)]
    assert loss_sum["operand_shapes"] == [(B, S, 51), (B, S, 1)]
    assert graph.edges["allreduce_loss_max", ids.end_id("loss_sum", 2)]["operands"] == (1,)
    assert list(graph.predecessors(ids.OUTPUT)) == [ids.end_id("loss", 2), ids.end_id("loss", 3)]
    assert graph.nodes[ids.OUTPUT]["in_shape"] == (1,)


def test_the_validator_holds_each_operand_to_its_own_shape():
    graph = compile_source(GPT).graph
    node = ids.end_id("loss_sum", 2)
    graph.nodes[node]["operand_shapes"] = [(B, S, 51), (B, S, 3)]
    found = validate(graph)
    assert [d.message.split(": ", 1)[1] for d in found] == [f"allreduce_loss_max gives [{B}, {S}, 1] but {node} takes [{B}, {S}, 3]"]


def test_a_tied_matrix_over_two_stages_sums_its_copies_gradients():
    graph = compile_source(GPT, "tie_embeddings=true").graph
    head = graph.nodes[ids.end_id("head", 2)]
    assert head["tied"] and head["params"] == 51 * H
    synced = [t for t in transfers(graph) if t.phase == "gradients" and t.node == ids.end_id("head", 2)]
    assert {t.group for t in synced} == {(0, 2)}
    assert sum(t.bytes for t in synced) == 2 * (51 * H * 4)  # each of the two sends (2 - 1) / 2 x 2 x T


def test_ends_settings_need_vocab_and_learned_positions_a_row_per_position():
    with pytest.raises(CompileError) as raised:
        compile_source(GPT.replace("vocab 101  ", ""), "tie_embeddings=true")
    assert [d.message for d in raised.value.diagnostics] == [
        "tie_embeddings needs vocab: without it the model has no embedding, head or loss"
    ]
    with pytest.raises(CompileError) as raised:
        compile_source(GPT, "positions=learned", "max_positions=8")
    (found,) = [d for d in raised.value.diagnostics if d.is_error]  # beside the note on padding 101 to 102
    assert found.message == "max_positions (8) is less than seq (16): position 8 has no learned row"
    assert str(found.span) == "<command line>:2:15"  # the second -D


def test_a_vocabulary_not_divisible_by_tp_is_padded_with_a_note():
    compiled = compile_source(GPT)
    notes = [d.message for d in compiled.warnings if d.severity == "note"]
    assert notes == ["vocab 101 padded to 102 for tp 2 (1 row)"]
    assert compiled.graph.graph["model"]["padded_vocab"] == 102
    assert not [d for d in compile_source(GPT, "vocab=100").warnings if d.severity == "note"]


def test_learned_positions_on_sequence_shards_sum_their_gradients_over_tp():
    """Under sequence parallelism each rank adds the positions of its part: a partial gradient of
    the table, AllReduced over tp after the step (as the code does; the trace test measures it)."""

    def tp_sync(*defines: str) -> float:
        graph = compile_source(GPT, "sp=on", *defines).graph
        return sum(t.bytes for t in transfers(graph) if t.phase == "gradients" and t.group == (0, 1) and t.senders == (0,))

    table = 32 * H * 4  # fp32; an AllReduce over 2 ranks sends 2 (2 - 1) / 2 = 1 x the tensor
    assert tp_sync("positions=learned", "max_positions=32") - tp_sync() == table


def test_the_loss_is_counted_in_fp32_and_token_ids_in_int64_whatever_the_dtype():
    """What the code computes: the logits are cast to fp32 for the loss, and ids are int64."""
    graph = compile_source(GPT, "dtype=bf16").graph
    for name in ("allreduce_loss_max", "allreduce_loss_sum"):
        data = graph.nodes[name]
        assert data["dtype"] == "fp32"
        assert data["bytes"] == 4 * B * S * (1 if name.endswith("max") else 2)
        assert data["wire_bytes"] == data["bytes"]  # an AllReduce over 2 ranks sends 2 (2 - 1) / 2 of it
    assert graph.nodes[ids.end_id("head", 2)]["dtype"] == "bf16"
    assert graph.nodes[ids.end_id("embed", 0)]["bytes"] == 8 * B * S
