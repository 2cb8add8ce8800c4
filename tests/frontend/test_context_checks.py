"""Context parallelism's settings and rules (docs/language.md, Context parallelism)."""

import pytest

from par.dsl.checks.check import check
from par.dsl.checks.deployment import Mesh
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text


def model(**settings) -> str:
    values = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "batch": 4, "seq": 32, "dtype": "fp32"} | settings
    body = "  ".join(f"{k} {v}" for k, v in values.items())
    return f"model m : llama {{ {body} }}\n"


def mesh_of(text: str, *defines: str) -> Mesh:
    overrides, _ = parse_defines(list(defines))
    deployment, _ = check(parse_text(text, "t.par"), overrides)
    return deployment.mesh


def test_cp_and_its_algorithm_are_mesh_settings_with_ring_by_default():
    mesh = mesh_of(model() + "mesh { tp 2  cp 4 }")
    assert (mesh.cp, mesh.cp_attention, mesh.world) == (4, "ring", 8)
    assert mesh_of(model() + "mesh { cp 2  cp_attention allgather }").cp_attention == "allgather"
    assert mesh_of(model() + "mesh { tp 2 }").cp == 1


def test_defines_override_cp_and_its_algorithm():
    mesh = mesh_of(model() + "mesh { tp 2 }", "cp=2", "cp_attention=allgather")
    assert (mesh.cp, mesh.cp_attention) == (2, "allgather")


def test_seq_must_split_into_two_chunks_per_rank(errors_of):
    text = model(seq=36) + "mesh { cp 4 }"
    (err,) = errors_of(text)
    assert "seq (36) is not divisible by 2 × cp (2 × 4 = 8)" in err.message
    assert "chunks i and 7 − i" in err.message
    assert (err.span.line, err.span.col) == (1, text.index("seq 36") + len("seq ") + 1)  # at the seq value
    suggested = [int(word) for word in err.hint.split("cp ")[-1].replace(",", " ").replace("or", " ").split()]
    assert suggested and all(36 % (2 * cp) == 0 for cp in suggested)


def test_the_world_counts_cp(errors_of):
    (err,) = errors_of(model() + "mesh { tp 2  cp 2  dp 2  world 4 }")
    assert err.message == "tp (2) × cp (2) × pp (1) × dp (2) = 8, but world is 4"
    assert errors_of(model() + "mesh { tp 2  cp 2  dp 2  world 8 }") == []


def test_sequence_parallelism_splits_each_ranks_part_over_tp(errors_of):
    # seq 48 / cp 2 = 24 tokens per rank, not divisible by tp 16 (48 itself is not either: one error)
    (err,) = errors_of(model(seq=48, heads=16, kv_heads=16, hidden=256) + "mesh { tp 16  cp 2  sp }")
    assert "24 tokens (seq 48 / cp 2) are not divisible by tp (16)" in err.message
    assert errors_of(model(seq=64) + "mesh { tp 2  cp 2  sp }") == []


def test_cp_with_expert_parallelism_is_refused(errors_of):
    text = (
        "model m : mixtral { layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  experts 4  top_k 2  batch 4  seq 32  dtype fp32 }\n"
        "mesh { cp 2  dp 2  ep 2 }\n"
    )
    messages = [err.message for err in errors_of(text)]
    assert any("cp (2) with ep (2)" in message for message in messages), messages


@pytest.mark.parametrize("word", ["ringg", "3"])
def test_an_unknown_algorithm_is_named(errors_of, word):
    (err,) = errors_of(model() + f"mesh {{ cp 2  cp_attention {word} }}")
    assert err.message.startswith("cp_attention must be one of ring, allgather, not ")
    assert err.span.line == 2


def test_an_algorithm_without_cp_is_a_warning():
    _, warnings = check(parse_text(model() + "mesh { cp_attention allgather }", "t.par"))
    assert [found.message for found in warnings] == ["cp_attention has no effect: cp is 1"]


def test_the_rank_order_is_tp_then_cp_then_pp_then_dp():
    mesh = mesh_of(model(layers=2, batch=4) + "mesh { tp 2  cp 3  pp 2  dp 2 }", "seq=48")
    seen = {}
    for d in range(2):
        for stage in range(2):
            for c in range(3):
                for t in range(2):
                    rank = mesh.rank(dp_rank=d, stage=stage, tp_rank=t, cp_rank=c)
                    seen[rank] = (d, stage, c, t)
                    assert mesh.coords(rank) == (d, stage, t) and mesh.cp_rank(rank) == c
    assert sorted(seen) == list(range(mesh.world))
    assert [seen[r] for r in range(4)] == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 0, 1, 1)]  # tp fastest, then cp
    assert mesh.cp_group_of(7) == (7, 9, 11) and mesh.tp_group_of(7) == (6, 7)
    assert mesh.gradient_group_of(1) == (1, 3, 5, 13, 15, 17)  # dp × cp ranks of one shard


def test_with_cp_1_the_numbering_is_unchanged():
    mesh = mesh_of(model(layers=2, batch=4) + "mesh { tp 2  pp 2  dp 2 }")
    for rank in range(mesh.world):
        d, stage, t = mesh.coords(rank)
        assert rank == (d * mesh.pp + stage) * mesh.tp + t  # DESIGN.md's formula
