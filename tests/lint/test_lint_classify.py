"""How nodes are classified, and that each classification says how it was made."""

from __future__ import annotations

import pytest

from par.lint.classify import classify_graph
from par.lint.dot_reader import read_dot_text
from par.lint.labels import ALL_DEVICES, devices_in_text, dims_in_lines, label_lines
from par.lint.view import build_view


def classify(statement: str, *, node: str = "n", context: str = ""):
    (graph,) = read_dot_text(f"digraph {{ {context} {statement} }}")
    return classify_graph(graph)[node]


@pytest.mark.parametrize("statement, kind, collective, why", [
    ('n [label="All-Reduce Sum\\nGPU: 0-7", shape=parallelogram]', "comm", "allreduce",
     "names AllReduce"),
    ("n [shape=ellipse]", "comm", "comm", "shape ellipse"),
    ('n [label="Residual Add\\nGPU: 0", shape=ellipse]', "compute", None,
     "names a computation (residual)"),
    ('n [label="Token Split\\nGPU: 0-7"]', "route", None, "routing/aggregation (split)"),
    ('n [label="Expert Gate"]', "route", None, "(gate)"),
    ('n [label="Gate Projection"]', "compute", None, "names a computation (proj)"),
    ('n [label="MLP Gate\\nGPU: 0"]', "compute", None, "names a computation (mlp)"),
    # the label decides before the shape does
    ('n [label="Expert Aggregation", shape=ellipse]', "route", None, "(aggregat)"),
    ('n [label="Expert Aggregation", shape=rectangle]', "route", None, "(aggregat)"),
    ('n [label="Network Stats"]', "compute", None, "shape default"),
    ("n [shape=parallelogram]", "route", None, "shape parallelogram"),
    ('n [label="Expert Dispatch\\nAll-to-All (128 ops)", shape=ellipse]', "comm", "alltoall",
     "names All-to-All"),
    ('n [label="Pipeline Send"]', "comm", "send", "names Send"),
    ('n [label="KV Ring Recv"]', "comm", "recv", "names Recv"),
    ('n [label="FC1 Linear (Column Parallel)\\nInput: [8, 16]\\nOutput: [8, 32]"]', "compute", None,
     "names a computation (linear)"),
])
def test_kinds_and_reasons(statement, kind, collective, why):
    info = classify(statement)
    assert (info.kind, info.collective) == (kind, collective)
    assert why in info.kind_why


@pytest.mark.parametrize("node, label, role", [
    ("input", "Embedding", "input"), ("x", "Model Input", "input"), ("y", "Final Output", "output"),
    ("mlp_output", "MLP Layer 0 Output", "output"), ("out", "Output Projection", None),
    ("attn_out_gpu_0", "Attention Output", None), ("z", "Input Tensor", "input"),
])
def test_input_and_output_nodes(node, label, role):
    assert classify(f'{node} [label="{label}"]', node=node).role == role


def test_loose_ends_titled_input_or_output_are_the_graphs_input_and_output():
    (graph,) = read_dot_text('digraph { a [label="Input Sequence Split", shape=ellipse]; '
                             'b [label="Linear"]; c [label="Output Aggregation", shape=ellipse]; '
                             'a -> b -> c; }')
    info = build_view(graph).info
    assert (info["a"].role, info["c"].role, info["b"].role) == ("input", "output", None)
    assert "a source titled" in info["a"].kind_why


@pytest.mark.parametrize("statement, context, devices, why", [
    ('n [label="Q Projection\\nGPU: 3"]', "", {3}, "label line 'GPU: 3'"),
    ('n [label="Recv KV\\nInput: <- GPU 15\\nGPU: 0"]', "", {0}, "label line 'GPU: 0'"),
    ('n [label="LayerNorm\\nGPU: 0-3 (TP4)"]', "", {0, 1, 2, 3}, "label line"),
    ('n [label="Expert\\nGPU: all GPUs"]', "", set(ALL_DEVICES), "label line"),
    ("n", "", None, "no GPU named"),
])
def test_devices_from_labels(statement, context, devices, why):
    info = classify(statement, context=context)
    assert (set(info.devices) if info.devices is not None else None) == devices
    assert why in info.devices_why


def test_devices_from_ids_and_clusters():
    (graph,) = read_dot_text('digraph { layer_0_qkv_gpu3; subgraph cluster_gpu5 { x; } '
                             'subgraph cluster_a { label="Device 2"; y; } '
                             'subgraph cluster_b { label="16 GPUs 4 heads"; z; } }')
    info = classify_graph(graph)
    assert info["layer_0_qkv_gpu3"].devices == {3}
    assert info["x"].devices == {5} and "cluster 'cluster_gpu5'" in info["x"].devices_why
    assert info["y"].devices == {2} and "Device 2" in info["y"].devices_why
    assert info["z"].devices is None


@pytest.mark.parametrize("node, label, cluster, layer, span", [
    ("layer_3_fc1_gpu0", "x", "", 3, None), ("Layer3_attn", "x", "", 3, None),
    ("gpu0_l7_attn", "x", "", 7, None), ("s0_layer12_norm", "x", "", 12, None),
    ("n", "L0-Q_proj", "", 0, None), ("n", "Layer 4\\nAttention", "", 4, None),
    ("n", "PP Stage 1\\nLayers 1-8", "", None, (1, 8)),
    ("layers_41_78_s1", "x", "", None, (41, 78)),
    ("n", "x", "Layer 5 Attention", 5, None), ("ln0_0", "LayerNorm", "", None, None),
])
def test_layers(node, label, cluster, layer, span):
    statement = f'{node} [label="{label}"]'
    if cluster:
        statement = f'subgraph cluster_c {{ label="{cluster}"; {statement} }}'
    info = classify(statement, node=node)
    assert (info.layer, info.layer_range) == (layer, span)


def test_label_text_escapes_and_html():
    assert label_lines("Q\\nK\\lV<br/>O\\N", node_id="n", graph_name="g", html_label=False) == \
        ["Q", "K", "V", "On"]
    assert label_lines("<b>A</b><br/>B &amp; C", node_id="n", graph_name="g",
                       html_label=True) == ["A", "B & C"]


def test_dims_in_the_ways_labels_state_them():
    dims = dims_in_lines(["Input: [batch_size=8, seq_len=128, hidden=1024]",
                          "Output: 4×[batch=8, seq=128, heads=4, d=32*8]"])
    assert [shape.numel for shape in dims.inputs] == [8 * 128 * 1024]
    assert [shape.numel for shape in dims.outputs] == [8 * 128 * 4 * 256]
    arrow = dims_in_lines(["[32, 2048, 7168] -> [32, 2048, 2]"])
    assert ([s.text for s in arrow.inputs], [s.text for s in arrow.outputs]) == (
        ["[32, 2048, 7168]"], ["[32, 2048, 2]"])
    assert dims_in_lines(["[Input: [1024,2048], Output: [1024,2048,4096]]"]).outputs[0].numel == \
        1024 * 2048 * 4096
    assert dims_in_lines(["Total tokens: 1M"]) is None


def test_device_counts_are_not_devices():
    assert devices_in_text("Base Layer (8 GPUs)") is None
    assert devices_in_text("TP=2 on GPUs 0,1") == {0, 1}


def test_a_transfer_names_the_devices_at_both_ends():
    assert devices_in_text("GPU: 3→8") == {3, 8}
    assert devices_in_text("GPU: 0-7 -> 8-15") == set(range(16))
