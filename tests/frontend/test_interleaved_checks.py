"""The interleaved schedule's settings and rules (docs/language.md, Interleaved pipeline)."""

from __future__ import annotations

import pytest

from par.dsl.checks.check import check
from par.dsl.checks.deployment import Mesh
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text

MODEL = "model m : gpt { layers 8  hidden 64  heads 4  batch 24  seq 16  dtype fp32 }\n"


def mesh_of(text: str, *defines: str) -> Mesh:
    overrides, _ = parse_defines(list(defines))
    deployment, _ = check(parse_text(text, "t.par"), overrides)
    return deployment.mesh


def test_chunks_split_the_layers_into_model_chunks_dealt_round_the_stages():
    mesh = mesh_of(MODEL + "mesh { pp 2  microbatches 4  schedule interleaved  chunks 2 }")
    assert (mesh.schedule, mesh.chunks) == ("interleaved", 2)
    assert mesh.stages == ((0, 1), (2, 3), (4, 5), (6, 7))
    # stage s holds chunks s, s + p, ...: non-contiguous layers
    assert [mesh.stage_layers(s) for s in range(2)] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert mesh.attributes()["chunks"] == 2 and Mesh.from_attributes(mesh.attributes()) == mesh


def test_explicit_stages_give_a_range_per_model_chunk():
    mesh = mesh_of(MODEL + "mesh { pp 2  microbatches 2  schedule interleaved  chunks 2  stages [3, 1, 2, 2] }")
    assert mesh.stages == ((0, 2), (3, 3), (4, 5), (6, 7))
    assert mesh.stage_layers(0) == (0, 1, 2, 4, 5)


def test_defines_switch_a_spec_to_interleaving_and_contiguous_meshes_have_no_chunks():
    mesh = mesh_of(MODEL + "mesh { pp 2  microbatches 4 }", "schedule=interleaved", "chunks=4")
    assert (mesh.chunks, len(mesh.stages)) == (4, 8)
    plain = mesh_of(MODEL + "mesh { pp 2  microbatches 4 }")
    assert plain.chunks == 1 and "chunks" not in plain.attributes()


@pytest.mark.parametrize(
    ("mesh", "message", "at"),
    [
        ("pp 2  microbatches 4  schedule interleaved", "needs 2 or more model chunks per stage, and chunks is not set", "interleaved"),
        ("pp 2  microbatches 4  schedule interleaved  chunks 1", "chunks is 1", "1 }"),
        ("pp 2  microbatches 4  chunks 2", "chunks 2 needs schedule interleaved", "2 }"),
        ("pp 1  microbatches 4  schedule interleaved  chunks 2", "needs pp 2 or more", "interleaved"),
        ("pp 2  microbatches 3  schedule interleaved  chunks 2", "microbatches (3) is not a multiple of pp (2)", "3  schedule"),
        ("pp 2  microbatches 2  schedule interleaved  chunks 3", "layers (8) is not divisible by pp × chunks (6)", "8  hidden"),
        ("pp 2  microbatches 2  schedule interleaved  chunks 2  stages [4, 4]", "stages lists 2 entries but pp × chunks is 4", "stages"),
    ],
)
def test_each_rule_is_an_error_at_the_setting_it_names(errors_of, mesh, message, at):
    """`at`: the text the error's span starts at (the setting's value, or the keyword)."""
    text = MODEL + f"mesh {{ {mesh} }}\n"
    (err,) = errors_of(text)
    assert message in err.message
    assert err.hint
    assert text.splitlines()[err.span.line - 1][err.span.col - 1 :].startswith(at)


def test_chunks_in_a_serving_spec_is_an_error(errors_of):
    text = MODEL + "mesh { pp 2  microbatches 2  schedule interleaved  chunks 2 }\nserve { prompt 8  generate 4 }\n"
    assert any("chunks has no meaning in a serving spec" in err.message for err in errors_of(text))
