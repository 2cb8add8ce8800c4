"""dag.dot: every DAG node and edge, drawn with the conventions, as Graphviz itself reads it."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from par.codegen.dot.emit import (
    LARGE_DRAWING,
    emit_compact_dot,
    emit_dot,
    full_view,
    layout_attrs,
)
from par.codegen.json_dag import emit_json
from par.dsl import units
from par.dsl.compiler import compile_file, compile_text
from par.dsl.frontend.inputs import parse_defines

ROOT = Path(__file__).resolve().parents[2]
GPT = "tests/golden/specs/gpt_tp2_pp2.par"
LLAMA = "tests/golden/specs/llama_sp_dp2.par"
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"
SHAPES = {"compute": "box", "comm": "ellipse", "route": "parallelogram"}
HOSTILE_FILE = 'specs/back\\slash \\N & <b>/we"ird {x} <y> |z| ünï 数据.par'
CUSTOM_BLOCK = """
block mine(x) {
  norm = rmsnorm(x)
  up   = linear(norm, ffn, column)
  act  = silu(up)
  down = linear(act, hidden, row)
  out  = add(x, down)
  return out
}
model m : mine { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
mesh { tp 2  pp 2  microbatches 2 }
"""


def dag_nodes(layout):
    """The drawn nodes that stand for DAG nodes (not the legend or the ordering anchors)."""
    return {name: data for name, data in layout.nodes.items() if not name.startswith(("legend_", "anchor_"))}


def label_text(data) -> str:
    return re.sub(r"<[^>]+>", "\n", data["label"])


@pytest.fixture(scope="module", params=[GPT, LLAMA])
def drawn(request, compiled, layout):
    spec = compiled(request.param)
    return spec, layout(emit_dot(spec))


def test_every_dag_node_and_edge_is_drawn_once(drawn):
    spec, got = drawn
    graph = spec.graph
    assert set(dag_nodes(got)) == set(graph.nodes)
    visible = [(tail, head) for tail, head, data in got.edges if data.get("style") != "invis"]
    assert sorted(visible) == sorted(graph.edges)
    invisible = [(tail, head) for tail, head, data in got.edges if data.get("style") == "invis"]
    assert all(tail.startswith(("anchor_", "legend_")) or head.startswith("anchor_") for tail, head in invisible)


def test_shapes_follow_the_conventions(drawn):
    spec, got = drawn
    nodes = dag_nodes(got)
    for node, data in spec.graph.nodes(data=True):
        assert nodes[node].get("shape", "box") == SHAPES[data["kind"]], node


def test_every_node_is_labelled_with_op_gpu_and_dims(drawn):
    spec, got = drawn
    nodes = dag_nodes(got)
    for node, data in spec.graph.nodes(data=True):
        text = label_text(nodes[node])
        assert f"Input: [{', '.join(map(str, data['in_shape']))}]" in text, node
        assert f"Output: [{', '.join(map(str, data['out_shape']))}]" in text, node
        devices = data["devices"]
        assert (f"GPU {devices[0]}" if len(devices) == 1 else "GPUs ") in text, node
        if data["kind"] == "compute":
            assert data["op"] in text and data["name"] in text, node
        if data["layer"] is not None:
            assert f"layer {data['layer']}" in text, node


def test_collective_labels_carry_the_ring_bytes(compiled, layout):
    spec = compiled(GPT)
    got = dag_nodes(layout(emit_dot(spec)))
    model, mesh = spec.deployment.model, spec.deployment.mesh
    n = mesh.tp
    stream = model.batch // (mesh.dp * mesh.microbatches) * model.seq * model.hidden * model.dtype_bytes
    qkv = 3 * stream  # the gathered QKV
    # Ring bytes per rank: AllGather (n-1)/n of the full tensor, AllReduce 2(n-1)/n; a Send all of it.
    sent = {
        "layer_0_allgather_qkv": qkv * (n - 1) // n,
        "layer_0_allreduce_attn": stream * 2 * (n - 1) // n,
        "stage_0_send_gpu0": stream,
    }
    for node, expected in sent.items():
        assert spec.graph.nodes[node]["wire_bytes"] == expected, node
    assert spec.graph.nodes["stage_1_recv_gpu2"]["bytes"] == stream
    assert units.size(sent["layer_0_allgather_qkv"]) == "3.932 GB"
    assert units.size(stream) == "2.621 GB"
    assert "3.932 GB sent/rank" in label_text(got["layer_0_allgather_qkv"])
    assert "2.621 GB sent/rank" in label_text(got["layer_0_allreduce_attn"])
    assert "to GPU 2: 2.621 GB sent" in label_text(got["stage_0_send_gpu0"])
    assert "from GPU 0: 2.621 GB received" in label_text(got["stage_1_recv_gpu2"])


def test_collectives_are_coloured_by_kind(drawn):
    spec, got = drawn
    nodes = dag_nodes(got)
    colour = {}
    for node, data in spec.graph.nodes(data=True):
        if data["kind"] == "comm":
            kind = "send" if data["op"] in ("send", "recv") else data["op"]
            colour.setdefault(kind, set()).add(nodes[node]["fillcolor"])
    assert all(len(found) == 1 for found in colour.values()), colour
    assert len({next(iter(found)) for found in colour.values()}) == len(colour)


def test_clusters_per_stage_and_per_gpu(drawn):
    spec, got = drawn
    mesh = spec.deployment.mesh
    for node, data in spec.graph.nodes(data=True):
        assert got.cluster_of(node, "cluster_stage_") in (f"cluster_stage_{data['stage']}", f"cluster_stage_{data['stage']}_dp_{mesh.coords(data['devices'][0])[0]}")
        gpu = got.cluster_of(node, "cluster_gpu_")
        if len(data["devices"]) == 1 and data["op"] not in ("input", "output"):
            assert gpu == f"cluster_gpu_{data['devices'][0]}", node
        else:
            assert gpu is None, node
    assert {name for name in got.clusters if name.startswith("cluster_gpu_")} == {f"cluster_gpu_{rank}" for rank in range(mesh.world)}


def test_send_recv_edges_cross_stage_clusters(drawn):
    spec, got = drawn
    crossing = [(tail, head) for tail, head, data in got.edges if tail.startswith("stage_") and head.startswith("stage_")]
    assert len(crossing) == sum(1 for _, data in spec.graph.nodes(data=True) if data["op"] == "send")
    for tail, head in crossing:
        assert got.cluster_of(tail, "cluster_stage_").split("_")[2] != got.cluster_of(head, "cluster_stage_").split("_")[2]


@pytest.mark.parametrize(
    "defines",
    [("layers=2", "tp=2", "pp=2"), ("layers=2", "tp=4", "pp=2"), ("layers=3", "tp=4", "pp=3"), ("layers=2", "tp=2", "pp=2", "dp=2"), ("layers=2", "tp=8", "pp=2")],
)
def test_gpus_are_drawn_left_to_right_in_rank_order(compiled, layout, defines):
    spec = compiled("specs/megatron_tp8_pp2.par", *defines)
    got = layout(emit_dot(spec))
    mesh = spec.deployment.mesh
    for stage in range(mesh.pp):
        ranks = mesh.stage_ranks(stage)
        lefts = [got.bbox(f"cluster_gpu_{rank}")[0] for rank in ranks]
        assert lefts == sorted(lefts), (stage, ranks, lefts)


@pytest.mark.parametrize("emit", [emit_dot, emit_compact_dot])
def test_hostile_names_cannot_break_the_dot_syntax(layout, dot_run, emit):
    overrides, _ = parse_defines([])
    spec = compile_text(CUSTOM_BLOCK, HOSTILE_FILE, overrides)
    text = emit(spec)
    got = layout(text)  # parses with no warning
    assert {"input", "output", "layer_0_down_gpu1", "stage_0_send_gpu1"} <= set(dag_nodes(got))
    svg = ET.fromstring(dot_run(text, "-Tsvg").stdout)
    shown = [" ".join((element.text or "").split()) for element in svg.iter(f"{SVG}text")]
    assert f"from {HOSTILE_FILE}" in shown
    assert spec.deployment.name == 'we"ird {x} <y> |z| ünï 数据'
    assert f"{spec.deployment.name}: " + ("full DAG" if emit is emit_dot else "compact view") in " ".join(shown)
    tooltips = [link.get(f"{XLINK}title") for link in svg.iter(f"{SVG}a")]
    assert any(HOSTILE_FILE in tip for tip in tooltips)


def test_large_drawings_cap_the_layout_iterations():
    assert dict(layout_attrs(LARGE_DRAWING)).get("nslimit") is None
    capped = dict(layout_attrs(4 * LARGE_DRAWING))
    assert 0 < float(capped["nslimit"]) * 4 * LARGE_DRAWING <= 2 * LARGE_DRAWING


def test_the_view_is_a_pure_function_of_the_dag(compiled):
    """Drawing changes nothing in the DAG and leaves nothing behind in the process: after other
    drawings, a fresh compile of the spec draws the same text. (Across processes and hash seeds:
    tests/build/test_build_determinism.py.)"""
    spec = compiled(LLAMA)
    before = emit_json(spec.graph)
    text = emit_dot(spec)
    assert emit_json(spec.graph) == before
    emit_dot(compiled(GPT))
    emit_compact_dot(spec)
    assert emit_dot(compile_file(ROOT / LLAMA)) == text
    assert len(full_view(spec).edges) > spec.graph.number_of_edges()  # the DAG's edges and the anchors'
