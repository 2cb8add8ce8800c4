"""`--spec`: the DOT file against the DAG `par` compiles from the spec."""

from __future__ import annotations

from lint_dags import bypass_collectives, contract_dag, render_dot

from par.dsl.dag import ids
from par.lint import run_lint
from par.lint.dot_reader import read_dot_text
from par.lint.lint import lint_graph


def spec_findings(dot_text: str, spec_dag, spec_name="tiny.par"):
    (graph,) = read_dot_text(dot_text, file="t.dot")
    findings = lint_graph(graph, spec_dag=spec_dag, spec_name=spec_name)[1]
    return [finding for finding in findings if finding.code.startswith("SPEC")]


def test_the_dag_drawn_from_the_spec_matches_it():
    spec = contract_dag(layers=4, tp=2, pp=2, dp=2)
    assert spec_findings(render_dot(spec), spec) == []


def test_absent_layers_are_named_once():
    spec = contract_dag(layers=4, tp=2, pp=1)
    drawn = spec.copy()
    drawn.remove_nodes_from([node for node, data in spec.nodes(data=True) if data["layer"] == 2])
    findings = spec_findings(render_dot(drawn), spec)
    assert [(f.code, f.message) for f in findings] == [
        ("SPEC001", "layer 2 of spec `tiny.par` has no node in this DAG (it shows layers 0-1, 3)")]


def test_missing_collectives_are_named_by_layer_and_kind():
    spec = contract_dag(layers=2, tp=4, pp=1, sp=False)
    drawn = bypass_collectives(spec, ["layer_1_allreduce_mlp"])
    drawn.remove_node("layer_1_allreduce_mlp")
    findings = spec_findings(render_dot(drawn), spec)
    assert [f.code for f in findings] == ["SPEC002"]
    assert findings[0].message.startswith("layer 1: 1 AllReduce missing (spec `tiny.par` has 2")
    assert "`layer_1_allreduce_mlp`" in findings[0].message


def test_extra_collectives_and_extra_layers():
    spec = contract_dag(layers=2, tp=2, pp=1, sp=False)
    text = render_dot(spec)
    layer_0_end, layer_1_start, layer_1_end = (ids.compute_id(0, "out", 0),
                                               ids.compute_id(1, "ln1", 0),
                                               ids.compute_id(1, "out", 0))
    assert {layer_0_end, layer_1_start, layer_1_end} <= set(spec)
    text = text[:text.rindex("}")] + (
        '  layer_0_allgather_extra [label="AllGather\\nGPU: 0-1", shape=ellipse];\n'
        f'  {layer_0_end} -> layer_0_allgather_extra -> {layer_1_start};\n'
        f'  layer_7_norm [label="LayerNorm"];\n  {layer_1_end} -> layer_7_norm -> {ids.OUTPUT};\n'
        '}\n')
    findings = sorted(spec_findings(text, spec), key=lambda finding: finding.code)
    assert [(f.code, f.nodes) for f in findings] == [
        ("SPEC003", ("layer_0_allgather_extra",)), ("SPEC004", ())]
    assert "layer 7 is not in spec `tiny.par` (it has layers 0-1)" in findings[1].message


def test_a_collective_drawn_once_per_gpu_counts_once():
    spec = contract_dag(layers=1, tp=2, pp=1, sp=False)
    text = """digraph {
        input; output;
        l0_attn_gpu0 [label="Attention\\nGPU: 0"]; l0_attn_gpu1 [label="Attention\\nGPU: 1"];
        l0_allreduce_gpu0 [label="All-Reduce\\nGPU: 0"];
        l0_allreduce_gpu1 [label="All-Reduce\\nGPU: 1"];
        l0_mlp_gpu0 [label="MLP\\nGPU: 0"]; l0_mlp_gpu1 [label="MLP\\nGPU: 1"];
        l0_allreduce2 [label="AllReduce\\nGPU: 0-1", shape=ellipse];
        input -> l0_attn_gpu0 -> l0_allreduce_gpu0 -> l0_mlp_gpu0 -> l0_allreduce2 -> output;
        input -> l0_attn_gpu1 -> l0_allreduce_gpu1 -> l0_mlp_gpu1 -> l0_allreduce2;
    }"""
    assert spec_findings(text, spec) == []


def test_run_lint_with_a_spec(tmp_path):
    spec = contract_dag(layers=2, tp=2, pp=1)
    path = tmp_path / "drawn.dot"
    path.write_text(render_dot(spec), encoding="utf-8")
    assert run_lint([str(path)], spec_dag=spec, spec_name="tiny.par") == (
        "par lint: 1 file checked, 0 findings (0 errors) in 0 files\n", 0)
    short = contract_dag(layers=3, tp=2, pp=1)
    text, code = run_lint([str(path)], spec_dag=short, spec_name="tiny.par")
    assert code == 1 and f"{path}:1: SPEC001: layer 2 of spec `tiny.par` has no node" in text
