"""The DAG of an interleaved pipeline: model chunks dealt round the stages, a Send/Recv at every
chunk boundary (the last stage back to the first between rounds), every invariant proved."""

from __future__ import annotations

import pytest

from par.dsl.compiler import compile_text
from par.dsl.dag import ids
from par.dsl.dag.expand import node_count
from par.dsl.dag.validate import validate


def spec(layers: int = 8, pp: int = 2, chunks: int = 2, tp: int = 2, dp: int = 2, vocab: bool = False) -> str:
    ends = "  vocab 96" if vocab else ""
    return (
        f"model m : gpt {{ layers {layers}  hidden 32  heads 4  batch 12  seq 8  dtype fp32{ends} }}\n"
        f"mesh {{ tp {tp}  pp {pp}  dp {dp}  microbatches {pp}  schedule interleaved  chunks {chunks} }}\n"
    )


@pytest.fixture(scope="module")
def compiled():
    return compile_text(spec(), "t.par")


def test_each_layer_runs_on_the_stage_of_its_model_chunk(compiled):
    # 8 layers, pp 2, 2 chunks: chunks of 2 layers, on stages 0, 1, 0, 1
    expected_stage = {0: 0, 1: 0, 2: 1, 3: 1, 4: 0, 5: 0, 6: 1, 7: 1}
    mesh = compiled.deployment.mesh
    for node, data in compiled.graph.nodes(data=True):
        if data["layer"] is None:
            continue
        assert data["stage"] == expected_stage[data["layer"]], node
        assert all(mesh.coords(rank)[1] == data["stage"] for rank in data["devices"]), node


def test_a_microbatch_crosses_every_chunk_boundary_round_the_pipeline(compiled):
    graph, mesh = compiled.graph, compiled.deployment.mesh
    sends = [(node, data) for node, data in graph.nodes(data=True) if data["op"] == "send"]
    assert len(sends) == (2 * 2 - 1) * mesh.dp * mesh.tp  # p·v - 1 hops per pipeline path
    for dp_rank in range(mesh.dp):
        for tp_rank in range(mesh.tp):
            path = [data for _, data in sends if mesh.coords(data["devices"][0])[::2] == (dp_rank, tp_rank)]
            hops = [(data["chunk"], data["stage"], mesh.coords(data["peer"])[1]) for data in path]
            assert hops == [(0, 0, 1), (1, 1, 0), (2, 0, 1)]  # stage 1 hands chunk 1's output back to stage 0
            for data in path:  # the peer is the same tensor-parallel rank of the same replica
                assert mesh.coords(data["peer"])[::2] == (dp_rank, tp_rank)
    for node, data in sends:
        (recv,) = graph.successors(node)
        assert graph.nodes[recv]["op"] == "recv" and graph.nodes[recv]["chunk"] == data["chunk"] + 1
        assert recv == ids.chunk_recv_id(data["chunk"] + 1, data["peer"])


def test_the_stage_that_runs_again_records_that_it_received_after_it_sent(compiled):
    """Stage 0 sends chunk 0's output and later receives chunk 1's: that order holds only through
    the other stages, so the DAG records it (`after`), and without it invariant 6 fails."""
    graph = compiled.graph
    recv = ids.chunk_recv_id(2, 0)
    assert graph.nodes[recv]["after"] == ids.chunk_send_id(0, 0)
    assert validate(graph) == []
    del graph.nodes[recv]["after"]
    try:
        found = validate(graph)
    finally:
        graph.nodes[recv]["after"] = ids.chunk_send_id(0, 0)
    assert any("invariant 6" in d.message and recv in d.message for d in found)


@pytest.mark.parametrize(
    "text",
    [spec(), spec(layers=12, pp=3, chunks=2, tp=1, dp=1), spec(layers=12, pp=2, chunks=3, vocab=True), spec(layers=8, pp=2, chunks=4, tp=1)],
)
def test_every_invariant_holds_and_the_node_budget_counts_the_boundaries(text):
    compiled = compile_text(text, "t.par")
    assert len(compiled.graph) == node_count(compiled.program, compiled.layer_programs)
    mesh = compiled.deployment.mesh
    sends = sum(data["op"] == "send" for _, data in compiled.graph.nodes(data=True))
    assert sends == (mesh.pp * mesh.chunks - 1) * mesh.dp * mesh.tp
