"""Each rule finds what it names, and nothing in a DAG that is right.

The oracles are the DAGs themselves: `lint_dags` compiles them from a spec, so a test knows
which nodes it broke.
"""

from __future__ import annotations

import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lint_dags import bypass_collectives, contract_dag, render_dot

from par.dsl.dag import ids
from par.lint.dot_reader import read_dot_text
from par.lint.lint import lint_graph


def lint_text(text: str):
    (graph,) = read_dot_text(text, file="t.dot")
    return lint_graph(graph)[1]


def by_code(findings) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for finding in findings:
        found.setdefault(finding.code, []).extend(finding.nodes)
    return found


# --- the reviewer's case ------------------------------------------------------------------

def test_reviewers_case_reports_exactly_the_32_unconnected_allgathers():
    dag = contract_dag(layers=16, tp=8, pp=2, sp=True)
    allgathers = sorted(node for node in dag if "_allgather_" in node)
    # two per layer with sequence parallelism: before the QKV projection and before the MLP
    assert len(allgathers) == 32 and ids.collective_id(15, "allgather_ln2", 0, 1) in allgathers
    findings = lint_text(render_dot(bypass_collectives(dag, allgathers)))
    assert {finding.code for finding in findings} == {"DAG005"}
    assert sorted(node for finding in findings for node in finding.nodes) == allgathers
    assert all("no input and no output edge" in finding.message for finding in findings)


# --- what par emits lints clean -----------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(layers=16, tp=8, pp=2, sp=True),
    dict(layers=16, tp=8, pp=2, sp=False),
    dict(layers=4, tp=2, pp=2, dp=2),
    dict(layers=3, tp=1, pp=1),
])
def test_contract_dags_lint_clean(kwargs):
    assert lint_text(render_dot(contract_dag(**kwargs))) == []


@settings(max_examples=20, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2, 3]), dp=st.sampled_from([1, 2]),
       per_stage=st.integers(1, 2), sp=st.booleans())
def test_every_contract_dag_lints_clean(tp, pp, dp, per_stage, sp):
    dag = contract_dag(layers=pp * per_stage, tp=tp, pp=pp, dp=dp, sp=sp)
    assert lint_text(render_dot(dag)) == []


# --- mutations: break one thing, the matching rule names it --------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_cutting_a_collectives_edge_is_reported_on_that_collective(seed):
    dag = contract_dag(layers=2, tp=2, pp=1, sp=False)
    comm_edges = sorted((src, dst) for src, dst in dag.edges
                        if dag.nodes[src]["kind"] == "comm" or dag.nodes[dst]["kind"] == "comm")
    src, dst = random.Random(seed).choice(comm_edges)
    dag.remove_edge(src, dst)
    findings = lint_text(render_dot(dag))
    collective = src if dag.nodes[src]["kind"] == "comm" else dst
    dangling = {node for node in (src, dst) if node != collective}
    codes = by_code(findings)
    still_connected = dag.out_degree(collective) and dag.in_degree(collective)
    if not still_connected:
        assert collective in codes["DAG005"]
    assert set(codes.get("DAG005", [])) <= {collective}
    for node in dangling:  # the compute side lost its only edge that way, or kept another
        lost = dag.out_degree(node) == 0 if node == src else dag.in_degree(node) == 0
        assert (node in codes.get("DAG003", []) + codes.get("DAG002", [])) == bool(lost)


def test_cycle_prints_a_path_and_self_loops_are_named():
    findings = lint_text("digraph { in_put -> a -> b -> c -> a; c -> c; c -> output; }")
    messages = sorted(finding.message for finding in findings if finding.code == "DAG001")
    assert messages == ["cycle: a -> b -> c -> a", "self-loop: `c` -> `c`"]


def test_nodes_without_inputs_or_outputs():
    text = """digraph {
        input [label="Input"]; output [label="Output"];
        a [label="Linear\\nGPU: 0"]; b [label="GELU"]; orphan [label="Dropout"];
        dead_end [label="LayerNorm"]; unused [label="Residual Add"];
        input -> a -> b -> output; input -> dead_end; orphan -> b;
    }"""
    codes = by_code(lint_text(text))
    assert codes == {"DAG002": ["orphan"], "DAG003": ["dead_end"], "DAG004": ["unused"]}


def test_sources_and_sinks_are_fine_where_the_graph_names_no_input_or_output():
    assert lint_text("digraph { a [label=Embedding]; b; c; d; a -> b; c -> b; b -> d; }") == []


def test_comm_nodes_missing_one_side_and_classified_by_shape_or_name():
    text = """digraph {
        input -> x; x -> sink_op; x -> ar_in_only; ar_out_only -> sink_op;
        ar_in_only [label="All-Reduce\\nGPU: 0-7", shape=parallelogram];
        ar_out_only [label="exchange", shape=ellipse];
        sink_op [label="Linear"]; x [label="Linear"]; input [label="Input"];
    }"""
    findings = [finding for finding in lint_text(text) if finding.code == "DAG005"]
    assert [(f.nodes, "no output edge" in f.message, "no input edge" in f.message)
            for f in findings] == [(("ar_in_only",), True, False), (("ar_out_only",), False, True)]
    assert "id/label names AllReduce" in findings[0].message
    assert "shape ellipse" in findings[1].message


def test_edges_to_undeclared_nodes_and_edges_to_clusters():
    text = """digraph {
        a [label="A"]; b [label="B"]; a -> b; b -> typo_c;
        subgraph cluster_gpu0 { label="GPU 0"; c [label="C"]; }
        a -> cluster_gpu0;
    }"""
    findings = [f for f in lint_text(text) if f.code == "DAG006"]
    assert [f.nodes for f in findings] == [("typo_c",), ("cluster_gpu0",)]
    assert "a cluster" in findings[1].message and findings[0].line == 2


def test_undeclared_nodes_are_not_reported_where_the_file_declares_none():
    assert lint_text("digraph { a -> b -> c; }") == []


def test_graphviz_laid_out_files_show_unlabelled_nodes_as_undeclared():
    labelled = "".join(f'n{i} [label="Op {i}"]; ' for i in range(8))
    text = f'digraph {{ node [label="\\N", pos="0,0"]; {labelled} "n-1" ; n0 -> "n-1" -> n2; }}'
    assert [f.nodes for f in lint_text(text) if f.code == "DAG006"] == [("n-1",)]


def test_stray_node_from_a_broken_style_list():
    text = "digraph { subgraph cluster_a { style=rounded filled fillcolor=grey; a; b; a -> b; } }"
    findings = lint_text(text)
    assert [(f.code, f.nodes) for f in findings] == [("DAG010", ("filled",))]


def test_layer_gaps_name_the_missing_layers():
    dag = contract_dag(layers=6, tp=2, pp=1, sp=False)
    text = render_dot(dag)
    kept = "\n".join(line for line in text.splitlines()
                     if not any(f"layer_{n}_" in line for n in (2, 4)))
    gaps = [f.message for f in lint_text(kept) if f.code == "DAG007"]
    assert len(gaps) == 2
    assert gaps[0].startswith("layer numbering skips layer 2:")
    assert gaps[1].startswith("layer numbering skips layer 4:")


def test_layer_ranges_cover_their_layers():
    text = """digraph { input -> l0 -> mid -> l9 -> output;
        l0 [label="Layer 0"]; mid [label="Layers 1-8\\n[Repeated Pattern]"]; l9 [label="Layer 9"];
        input [label="Input"]; output [label="Output"]; }"""
    assert lint_text(text) == []


def test_shards_reaching_a_replicated_op_without_collective():
    dag = contract_dag(layers=1, tp=4, pp=1, sp=False)
    # draw the AllReduce after attention as a plain concat: a routing node, no collective
    dag.nodes["layer_0_allreduce_attn"].update(op="concat", kind="route")
    dag = nx.relabel_nodes(nx.DiGraph(dag), {"layer_0_allreduce_attn": "layer_0_concat_attn"})
    findings = lint_text(render_dot(dag))
    codes = by_code(findings)
    assert sorted(codes) == ["DAG008"]
    # the residual adds after attention (`h = add(x, attn)`) on GPUs 0-3
    assert sorted(codes["DAG008"]) == [ids.compute_id(0, "h", rank) for rank in range(4)]
    assert "through `layer_0_concat_attn`" in findings[0].message
    assert "GPUs 0-3" in findings[0].message


def test_direct_merge_of_two_gpus_and_collective_edges_that_excuse_it():
    merge = """digraph {
        a [label="Linear\\nGPU: 0"]; b [label="Linear\\nGPU: 1"]; c [label="LayerNorm\\nGPU: 0-1"];
        a -> c; b -> c %s;
    }"""
    assert [f.code for f in lint_text(merge % "")] == ["DAG008"]
    assert lint_text(merge % '[label="AllReduce"]') == []


def test_dims_that_disagree_along_an_edge():
    text = """digraph {
        a [label="Linear\\nInput: [8, 128, 1024]\\nOutput: [8, 128, 4096]"];
        b [label="GELU\\nInput: [8, 128, 3072]\\nOutput: [8, 128, 2048]"];
        c [label="Reshape\\nInput: [batch=8, seq=128, heads=16, d=128]\\nOutput: [8, 128, 2048]"];
        s [label="Slice (R to S)\\nInput: [8, 128, 1024]\\nOutput: [8, 128, 1024]"];
        a -> b; b -> c; c -> s;
    }"""
    findings = lint_text(text)
    assert [(f.code, f.nodes) for f in findings] == [("DAG009", ("b",))]
    assert "takes [8, 128, 3072]" in findings[0].message
    assert "`a` gives [8, 128, 4096]" in findings[0].message


def test_collectives_take_the_whole_tensor_but_may_take_pieces_together():
    text = """digraph {
        p0 [label="Linear\\nGPU: 0\\nOutput: [8, 512]"];
        p1 [label="Linear\\nGPU: 1\\nOutput: [8, 512]"];
        g [label="AllGather\\nInput: [8, 1024]\\nOutput: [8, 1024]"];
        r [label="AllReduce\\nInput: [8, 256]\\nOutput: [8, 256]"];
        sink [label=Add]; p0 -> g; p1 -> g; p0 -> r; g -> sink; r -> sink;
    }"""
    assert [(f.code, f.nodes) for f in lint_text(text)] == [("DAG009", ("r",))]


def test_tensor_parallelism_with_no_collective_at_all():
    shards = "".join(f'q{g} [label="Q Projection\\nGPU: {g}"]; '
                     f'attn{g} [label="Attention\\nGPU: {g}"]; '
                     f"input -> q{g} -> attn{g} -> concat; " for g in range(4))
    text = (f'digraph {{ input; output; concat [label="Concat", shape=parallelogram]; {shards} '
            "concat -> output; }")
    findings = lint_text(text)
    assert [(f.code, f.nodes) for f in findings] == [
        ("DAG011", ("attn0", "attn1", "attn2", "attn3"))]
    # the same DAG with the concat drawn as an AllGather is fine
    assert lint_text(text.replace('label="Concat", shape=parallelogram', 'label="AllGather"')) == []


def test_declared_tensor_parallelism_needs_a_collective_somewhere():
    text = ('digraph { input -> mha -> output; '
            'mha [label="Multi-Head Attention\\nTP=2 on GPUs 0,1"]; }')
    assert [(f.code, f.nodes) for f in lint_text(text)] == [("DAG011", ("mha",))]
    fused = text.replace("TP=2 on GPUs 0,1", "TP=2 (QKV→Attn→Proj→AR)")
    assert lint_text(fused) == []


def test_data_parallel_replicas_are_not_tensor_parallel_shards():
    assert lint_text(render_dot(contract_dag(layers=2, tp=1, pp=1, dp=4))) == []


# --- any graph at all: the rules report, they never crash, and they agree with each other --

_LABELS = st.sampled_from([
    "All-Reduce\\nGPU: 0-3", "AllGather", "Linear\\nGPU: 0", "Linear\\nGPU: 1", "Concat",
    "Layer 2\\nLayerNorm", "Layers 1-8", "Input", "Output", "Send KV\\nGPU: 0", "GELU\\nGPU: all",
    "Q Projection GPU3\\nInput: [8, 16]\\nOutput: [8, 32]", "Add\\nInput: [8, 32]", "TP=4 block",
])


@st.composite
def any_graphs(draw):
    count = draw(st.integers(1, 10))
    nodes = [f"n{i}" for i in range(count)]
    lines = ["digraph {"]
    for node in nodes:
        label = draw(_LABELS)
        shape = draw(st.sampled_from(["box", "ellipse", "parallelogram", "diamond"]))
        lines.append(f'{node} [label="{label}", shape={shape}];')
    pairs = st.tuples(st.sampled_from(nodes), st.sampled_from(nodes))
    for src, dst in draw(st.lists(pairs, max_size=15)):
        label = draw(st.sampled_from(["", ' [label="AllReduce"]', " [style=invis]"]))
        lines.append(f"{src} -> {dst}{label};")
    return "\n".join(lines + ["}"]), nodes


@settings(max_examples=60, deadline=None)
@given(any_graphs())
def test_rules_never_crash_and_name_real_nodes(graph):
    text, nodes = graph
    findings = lint_text(text)
    per_node = [f.nodes[0] for f in findings if f.code in ("DAG002", "DAG003", "DAG004", "DAG005")]
    assert len(per_node) == len(set(per_node))  # one connectivity finding per node at most
    assert all(node in nodes for finding in findings for node in finding.nodes)


def test_legends_notes_and_undirected_graphs():
    text = """digraph {
        input -> a -> output; a [label="Linear"];
        subgraph cluster_legend { label="Legend"; k1 [label="Computation", shape=box];
                                  k2 [label="Communication", shape=ellipse]; }
        remark [label="TP=8 everywhere", shape=note];
    }"""
    assert lint_text(text) == []
    undirected = lint_text("graph { input -- a -- output; a; b; }")
    assert [(f.code, f.nodes) for f in undirected] == [("DAG004", ("b",))]


def test_huge_layer_numbers_are_gaps_in_constant_memory():
    # One hostile label used to build every missing layer (MemoryError in par lint).
    text = """digraph { a -> b -> c;
        a [label="Layer 0"]; b [label="Layer 99999999999"]; c [label="Layer 100000000001"]; }"""
    gaps = [f.message for f in lint_text(text) if f.code == "DAG007"]
    assert gaps == [
        ("layer numbering skips layers 1-99999999998: it jumps from layer 0 to layer 99999999999 "
         "(`b`, layer from label line 'Layer 99999999999')"),
        ("layer numbering skips layer 100000000000: it jumps from layer 99999999999 to layer "
         "100000000001 (`c`, layer from label line 'Layer 100000000001')"),
    ]


def test_a_layer_range_too_wide_to_be_one_is_not_read_as_layers():
    # "Layers 1-99999999999" used to put every one of those layers in a set (MemoryError).
    text = """digraph { a -> b -> c -> d;
        a [label="Layer 0"]; b [label="Layers 1-99999999999"]; c [label="Layers 1-4097"];
        d [label="Layer 4098"]; }"""
    (graph,) = read_dot_text(text, file="t.dot")
    view, findings = lint_graph(graph)
    assert findings == []
    assert view.info["b"].layer_range is None
    assert view.info["c"].layers == range(1, 4098)  # 4,097 layers: the widest range still read


def test_gaps_around_overlapping_ranges_point_at_the_node_after_the_gap():
    text = """digraph { a -> b -> c -> d;
        a [label="Layers 0-5"]; b [label="Layers 2-3"]; c [label="Layer 9"]; d [label="Layers 9-12"]; }"""
    (gap,) = [f for f in lint_text(text) if f.code == "DAG007"]
    assert gap.nodes == ("c",) and "skips layers 6-8" in gap.message


def test_a_fused_qkv_output_feeds_attention_a_third_of_its_width():
    text = """digraph {
        qkv [label="QKV Projection\\n[32, 2048, 7168] -> [32, 2048, 128, 384]\\nGPU: 0"];
        attn [label="MHA\\n[32, 2048, 128, 128] -> [32, 2048, 128, 128]\\nGPU: 0"];
        mlp [label="MLP Up\\n[32, 2048, 128, 128] -> [32, 2048, 128, 512]\\nGPU: 0"];
        down [label="MLP Down\\n[32, 2048, 128, 128] -> [32, 2048, 128, 128]\\nGPU: 0"];
        qkv -> attn -> mlp -> down;
    }"""
    # a third of a fused QKV is Q, K or V; a quarter of an MLP's output is a mismatch
    assert [(f.code, f.nodes) for f in lint_text(text)] == [("DAG009", ("down",))]


def test_experts_meeting_over_receive_edges_are_not_tensor_parallelism():
    experts = "".join(f'e{g} [label="Expert {g} Linear\\nGPU: {g}"]; split -> e{g}; '
                      f'e{g} -> agg [label="recv from GPU {g}"]; ' for g in range(4))
    text = (f'digraph {{ input; output; split [label="Token Split"]; '
            f'agg [label="Expert Aggregate"]; input -> split; {experts} agg -> output; }}')
    assert lint_text(text) == []


def test_notes_placeholders_and_tables_are_not_dataflow():
    text = """digraph {
        input -> attn -> output; attn [label="Attention"];
        title [label="Memory Layout Analysis", shape=box];
        dp [label="DP=8", shape=ellipse];
        ring [label="16 Ring Stages", shape=ellipse];
        ellipse [shape=ellipse];
        rest [label="...\\nGPU 1-15\\n(Same structure as GPU 0)"];
        subgraph cluster_table { gpu8_free [label="GPU 8\\nAvailable"]; gpu9_free [label="GPU 9"]; }
        lost [label="LayerNorm"];
        ar [label="All-Reduce", shape=ellipse];
    }"""
    # an edge-less computation or collective is still reported
    assert by_code(lint_text(text)) == {"DAG004": ["lost"], "DAG005": ["ar"]}


def test_an_edge_less_cluster_beside_a_wired_one_is_not_a_table():
    text = """digraph {
        subgraph cluster_0 { gpu_0 [label="GPU 0\\nExpert 0"]; gpu_1 [label="GPU 1\\nExpert 0"]; }
        subgraph cluster_1 { gpu_2 [label="GPU 2\\nExpert 1"]; }
        input -> gpu_0 -> gpu_1 -> output;
    }"""
    assert by_code(lint_text(text)) == {"DAG004": ["gpu_2"]}


def test_a_collective_that_ends_a_drawing_without_an_output_is_one_of_its_sinks():
    sink = "digraph { a [label=FC2]; b [label=FC2]; ar [label=AllReduce]; a -> ar; b -> ar; }"
    assert lint_text(sink) == []
    # a branch off a path that goes on, or a graph with an output: the result is lost
    branch = sink.replace("}", "c [label=Add]; a -> c; }")
    assert by_code(lint_text(branch)) == {"DAG005": ["ar"]}
    with_output = "digraph { a [label=FC2]; input -> a -> ar; a -> output; ar [label=AllReduce]; }"
    assert by_code(lint_text(with_output)) == {"DAG005": ["ar"]}


def test_gpus_linked_both_ways_are_not_a_cycle_but_ops_are():
    links = """digraph { g0 [label="GPU 0"]; g1 [label="GPU 1"]; a2a [label="All-to-All"];
        g0 -> g1 [label=TP_AllReduce]; g1 -> g0; g0 -> a2a; a2a -> g1; }"""
    assert "DAG001" not in by_code(lint_text(links))
    ops = """digraph { a [label="FC1\\nGPU 0"]; b [label="FC2\\nGPU 0"]; a -> b -> a; }"""
    assert "DAG001" in by_code(lint_text(ops))


def test_an_edge_that_says_layers_are_left_out_covers_the_gap():
    text = """digraph { input -> layer_0_mlp -> layer_9_mlp [label="... 8 layers ..."];
        layer_9_mlp -> output; }"""
    assert lint_text(text) == []
    assert by_code(lint_text(text.replace('"... 8 layers ..."', "next"))) == {"DAG007": ["layer_9_mlp"]}


def test_one_finding_per_defect_repeated_on_every_gpu():
    nodes = "".join(f'fc_gpu{g} [label="FC\\nGPU: {g}"]; ' for g in range(8))
    findings = lint_text(f"digraph {{ norm [label=Norm]; input -> norm -> output; {nodes} }}")
    assert [(f.code, f.nodes) for f in findings] == [
        ("DAG004", tuple(f"fc_gpu{g}" for g in range(8)))]
    assert "the same for `fc_gpu1`" in findings[0].message


def test_a_misspelt_endpoint_names_the_isolated_node_it_meant_once():
    text = """digraph {
        input; output; router [label="Router"];
        expert0_gpu8 [label="Expert 0"]; expert1_gpu8 [label="Expert 1"];
        other_node [label="Norm"];
        input -> router; router -> "expert-8_gpu8"; router -> "expert-7_gpu8"; router -> output;
        "expert-8_gpu8" -> output; "expert-7_gpu8" -> output;
    }"""
    findings = lint_text(text)
    # each misspelt id is one DAG006 naming its isolated node; that node gets no DAG004 of its
    # own; an isolated node no endpoint resembles still does
    assert [(f.code, f.nodes) for f in findings] == [
        ("DAG004", ("other_node",)),
        ("DAG006", ("expert-8_gpu8", "expert0_gpu8")),
        ("DAG006", ("expert-7_gpu8", "expert1_gpu8"))]
    assert "did you mean `expert0_gpu8`" in findings[1].message


@pytest.mark.parametrize("second, gap", [("Layers 4-7", False), ("Layers 6-7", True)])
def test_a_stage_label_range_covers_the_nodes_inside(second, gap):
    text = f"""digraph {{
        subgraph cluster_s0 {{ label="Pipeline Stage 0 (Layers 0-3)"; a [label="Attention"]; }}
        subgraph s1 {{ graph [label="Pipeline Stage 1 ({second})"]; b [label="Attention"]; }}
        input -> a -> send -> b -> output; send [label="Send"];
    }}"""
    assert ("DAG007" in by_code(lint_text(text))) == gap
