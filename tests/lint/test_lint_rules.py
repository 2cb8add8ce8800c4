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
    dag = nx.relabel_nodes(dag, {"layer_0_allreduce_attn": "layer_0_concat_attn"})
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
