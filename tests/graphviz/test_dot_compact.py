"""dag.compact.dot: layer 0 of replica 0 in full, each other run of layers of a stage folded."""

import re

import pytest

from par.codegen.dot.compact import folds
from par.codegen.dot.emit import emit_compact_dot

GPT = "tests/golden/specs/gpt_tp2_pp2.par"
LLAMA = "tests/golden/specs/llama_sp_dp2.par"


def drawn_dag_nodes(spec, layer=0):
    """Independent of the view: the DAG nodes a compact view of `layer` must show as themselves."""
    mesh = spec.deployment.mesh
    shown = set()
    for node, data in spec.graph.nodes(data=True):
        if data["op"] in ("input", "output"):
            shown.add(node)
        elif mesh.coords(data["devices"][0])[0] == 0 and data["layer"] in (None, layer):
            shown.add(node)
    return shown


def label_lines(data) -> list[str]:
    return [line for line in re.split(r"<[^>]+>", data["label"]) if line]


@pytest.mark.parametrize("spec_path", [GPT, LLAMA, "specs/baseline_tp8_pp2.par", "specs/layerwise.par", "specs/llama_gqa.par"])
def test_compact_view_shows_layer_0_and_folds_the_rest(compiled, layout, spec_path):
    spec = compiled(spec_path)
    got = layout(emit_compact_dot(spec))
    mesh, layers = spec.deployment.mesh, spec.deployment.model.layers
    names = {name for name in got.nodes if not name.startswith(("legend_", "anchor_"))}
    boxes = {name for name in names if name.startswith("folded_layers_")}
    assert names - boxes == drawn_dag_nodes(spec)
    # One box per stage for the layers other than layer 0: [1..last of stage 0], then whole stages.
    expected = [(1, mesh.stages[0][1])] if mesh.stages[0][1] > 0 else []
    expected += [tuple(stage) for stage in mesh.stages[1:]]
    assert boxes == {f"folded_layers_{first}_{last}" for first, last in expected}
    assert sum(last - first + 1 for first, last in expected) == layers - 1
    assert len(names) < 200  # one screen, whatever the size of the DAG
    for box in boxes:
        assert got.nodes[box]["shape"] == "box3d"


def test_folded_boxes_count_what_they_hold(compiled, layout):
    spec = compiled("specs/baseline_tp8_pp2.par")
    got = layout(emit_compact_dot(spec))
    graph = spec.graph
    for first, last in [(1, 7), (8, 15)]:
        held = [data for _, data in graph.nodes(data=True) if data["layer"] is not None and first <= data["layer"] <= last]
        compute = sum(1 for data in held if data["kind"] == "compute")
        assert compute == (last - first + 1) * 10 * 8  # 10 compute ops of the gpt block on each of 8 GPUs
        lines = label_lines(got.nodes[f"folded_layers_{first}_{last}"])
        assert f"Layers {first}-{last} (folded)" in lines
        assert f"{compute} computations, {2 * 8 * (last - first + 1)} slices" in lines
        count = last - first + 1
        assert any(line.startswith(f"{2 * count} AllGather, {2 * count} AllReduce: ") for line in lines), lines


def test_compact_edges_are_the_dags_between_what_is_drawn(compiled, layout):
    spec = compiled(GPT)
    got = layout(emit_compact_dot(spec))
    visible = {(tail, head) for tail, head, data in got.edges if data.get("style") != "invis"}
    dag = set(spec.graph.edges)
    between_drawn = {(tail, head) for tail, head in visible if not tail.startswith("folded_") and not head.startswith("folded_")}
    assert between_drawn <= dag
    assert {("stage_0_send_gpu0", "stage_1_recv_gpu2"), ("stage_0_send_gpu1", "stage_1_recv_gpu3")} <= visible
    assert {("stage_1_recv_gpu2", "folded_layers_1_1"), ("stage_1_recv_gpu3", "folded_layers_1_1")} <= visible
    # the model's ends after the folded layer: the final norm on each rank, the loss into output
    assert {("folded_layers_1_1", "final_norm_gpu2"), ("folded_layers_1_1", "final_norm_gpu3")} <= visible
    assert {("loss_gpu2", "output"), ("loss_gpu3", "output")} <= visible


def test_pipeline_sends_stay_in_rank_order(compiled, layout):
    spec = compiled("specs/megatron_tp8_pp2.par", "layers=4", "tp=4")
    got = layout(emit_compact_dot(spec))
    for row in (["stage_0_send_gpu0", "stage_0_send_gpu1", "stage_0_send_gpu2", "stage_0_send_gpu3"], ["stage_1_recv_gpu4", "stage_1_recv_gpu5", "stage_1_recv_gpu6", "stage_1_recv_gpu7"]):
        xs = [float(got.nodes[node]["pos"].split(",")[0]) for node in row]
        assert xs == sorted(xs), row


def test_fold_ranges_skip_the_expanded_layer(compiled):
    mesh = compiled("specs/layerwise.par").deployment.mesh
    assert [(fold.first, fold.last) for fold in folds(mesh, expanded=0)] == [(1, 3), (4, 7), (8, 11), (12, 15)]
    assert [(fold.first, fold.last) for fold in folds(mesh, expanded=5)] == [(0, 3), (4, 4), (6, 7), (8, 11), (12, 15)]


def test_a_block_per_range_draws_one_layer_of_each_block_and_folds_within_a_block(compiled):
    mesh = compiled("specs/layerwise.par").deployment.mesh  # 16 layers, 4 stages of 4
    assert [(fold.first, fold.last) for fold in folds(mesh, expanded={0, 6}, starts={6})] == [(1, 3), (4, 5), (7, 7), (8, 11), (12, 15)]
    spec = compiled("specs/deepseek_v3.par", "layers=5", "pp=2", "stages=0..2,3..4", "dp=4", "ep=4", "batch=8", "seq=64", "microbatches=2")
    text = emit_compact_dot(spec)
    assert "compact view (layers 0, 3 in full, one of each block, other layers folded" in text
    assert "layer_3_dispatch_moe_tokens" in text and "layer_0_mlp_gpu0" in text  # both blocks in full
    assert re.search(r"Layers 1-2 \(folded\)</B><BR/><FONT POINT-SIZE=\"9\">GPU 0 · 2 layers like layer 0", text)
    assert re.search(r"Layer 4 \(folded\)</B><BR/><FONT POINT-SIZE=\"9\">GPU 1 · 1 layer like layer 3", text)
