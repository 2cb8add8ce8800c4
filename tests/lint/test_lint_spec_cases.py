"""`--spec` on drawings that are not one node per op and GPU: representative layer ranges,
pipeline transfers named many ways, collectives drawn once per group (tests/lint/cases/spec/);
and `par`'s own drawings, full and compact, which must match their spec exactly, defects found."""

from __future__ import annotations

from pathlib import Path

import pytest
from lint_dags import SMALL, SPEC, contract_dag, render_dot

from par.codegen.dot.emit import emit_compact_dot, emit_dot
from par.dsl.compiler import compile_file
from par.lint.dot_reader import read_dot_file, read_dot_text
from par.lint.lint import lint_graph

CASES = Path(__file__).parent / "cases" / "spec"
LLAMA = SPEC.parent / "llama_gqa.par"
MOE = SPEC.parents[1] / "docs" / "examples" / "moe_tp2_ep2.par"

# file -> (the mesh of the spec it is compared with, the SPEC findings a reviewer reports as
# (code, where the message says they are))
VERDICTS = {
    # layer 0 drawn in full; layers 1-3 by a placeholder, 4-7 by a stage label and its boxes
    "layer_ranges.dot": (dict(layers=8, tp=2, pp=2, sp=False), set()),
    # "P2P", Send + Recv, an edge labelled "PP Transfer", "Send / Receive": four boundaries
    "transfer_names.dot": (dict(layers=5, tp=1, pp=5), set()),
    # boundaries after layers 0, 1, 2; transfers drawn after 1 and 3
    "transfer_missing.dot": (dict(layers=4, tp=1, pp=4),
                             {("SPEC002", "between pipeline stages"),
                              ("SPEC003", "between pipeline stages")}),
    # layer 0's AllReduces drawn per group and per GPU; layer 1 lacks the MLP's
    "per_group.dot": (dict(layers=2, tp=2, pp=1, dp=2, sp=False), {("SPEC002", "layer 1")}),
    # layers numbered 1-8 for the spec's 0-7, stages as boxes with ranges
    "numbered_from_1.dot": (dict(layers=8, tp=2, pp=2), set()),
    # "... 6 layers ..." on the edge from layer 0 to layer 7
    "elided_layers.dot": (dict(layers=8, tp=1, pp=1), set()),
    # a folded layer's "2 AllReduce: 1.2 GB", "All-Reduce (16 ops)": counts, not collectives
    "collective_counts.dot": (dict(layers=8, tp=2, pp=1, sp=False), set()),
    # stage labels split layers 0-1 from 2-3; the spec has one stage
    "stage_split.dot": (dict(layers=4, tp=1, pp=1), {("SPEC003", "between pipeline stages")}),
    # a ring attention's KV Send/Recv inside layer 0 is no pipeline transfer
    "ring_sends.dot": (dict(layers=2, tp=1, pp=1), set()),
    # "(TP4)" against tp 4; ranks ("TP Rank 1", "TP:0") are no degree
    "tp_degree.dot": (dict(layers=2, tp=4, pp=1), set()),
}


def spec_findings(graphs, spec_dag):
    return [finding for graph in graphs
            for finding in lint_graph(graph, spec_dag=spec_dag, spec_name="tiny.par")[1]
            if finding.code.startswith("SPEC")]


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_reviewers_verdict_with_a_spec(name):
    mesh, verdict = VERDICTS[name]
    findings = spec_findings(read_dot_file(str(CASES / name)), contract_dag(**mesh))
    assert {(finding.code, finding.message.split(":")[0]) for finding in findings} == verdict


def test_every_spec_case_has_a_verdict():
    assert {path.name for path in CASES.glob("*.dot")} == set(VERDICTS)


def test_missing_transfers_are_named_by_boundary():
    findings = spec_findings(read_dot_file(str(CASES / "transfer_missing.dot")),
                             contract_dag(layers=4, tp=1, pp=4))
    messages = sorted(finding.message for finding in findings)
    assert messages[0].startswith("between pipeline stages: a Send/Recv after layer 3, where ")
    assert messages[1].startswith("between pipeline stages: no Send/Recv after layers 0, 2 ")
    assert [finding.nodes for finding in findings if finding.code == "SPEC003"] == [("t3",)]


def test_a_layer_drawn_in_detail_without_its_collectives_is_reported():
    """A layer range stands for its layers, but a layer drawn op by op must show its
    collectives: the per_group case without its two layer-0 AllReduces misses both."""
    text = (CASES / "per_group.dot").read_text(encoding="utf-8")
    for collective, plain in [("All-Reduce (attention)", "Add"), ('"AllReduce\\nLayer 0', '"Add\\nLayer 0'),
                              ("ar_", "add_"), ("mlp_allreduce", "mlp_add")]:
        assert collective in text
        text = text.replace(collective, plain)
    findings = spec_findings(read_dot_text(text, file="t.dot"),
                             contract_dag(layers=2, tp=2, pp=1, dp=2, sp=False))
    assert [(f.code, f.message.split(" (")[0]) for f in findings] == [
        ("SPEC002", "layer 0: 2 AllReduce missing"), ("SPEC002", "layer 1: 1 AllReduce missing")]


# --- par's own drawings --------------------------------------------------------------------

DRAWINGS = {
    "megatron": (SPEC, [*SMALL, "layers=4", "tp=4", "pp=2"]),
    "llama_dp2": (LLAMA, ["hidden=64", "heads=8", "kv_heads=2", "ffn=128", "vocab=64", "seq=8",
                          "batch=8", "layers=4", "tp=2", "pp=2", "dp=2", "microbatches=2"]),
    # tp 2, 4 experts over ep 2: routed experts between an AllToAll dispatch and combine
    "moe": (MOE, ["layers=3", "pp=2"]),
}


def _drawn(spec: str, view) -> tuple[str, object]:
    path, defines = DRAWINGS[spec]
    compiled = compile_file(path, defines)
    return (emit_dot if view == "full" else emit_compact_dot)(compiled), compiled.graph


def _without(text: str, node: str) -> str:
    """The drawing with one node's statement and its edges deleted, as a hand edit would."""
    return "".join(line for line in text.splitlines(keepends=True) if f'"{node}"' not in line)


@pytest.mark.parametrize("spec", sorted(DRAWINGS))
@pytest.mark.parametrize("view", ["full", "compact"])
def test_par_drawings_match_their_spec(spec, view):
    text, dag = _drawn(spec, view)
    graphs = read_dot_text(text, file="dag.dot")
    assert [f for graph in graphs for f in lint_graph(graph, spec_dag=dag)[1]] == []


@pytest.mark.parametrize(("spec", "view", "node", "where"), [
    ("megatron", "full", "layer_1_allreduce_attn", "layer 1"),
    ("megatron", "full", "stage_0_send_gpu2", "between pipeline stages"),
    ("megatron", "compact", "layer_0_allreduce_mlp", "layer 0"),
    ("megatron", "compact", "stage_1_recv_gpu5", "between pipeline stages"),
    ("llama_dp2", "full", "layer_3_reducescatter_mlp_dp1", "layer 3"),
    ("llama_dp2", "compact", "layer_0_allgather_ln1_dp0", "layer 0"),
    ("moe", "full", "layer_2_combine_moe_down_tp1", "layer 2"),
    ("moe", "compact", "layer_0_dispatch_moe_tokens_tp0", "layer 0"),
])
def test_a_collective_dropped_from_a_par_drawing_is_found(spec, view, node, where):
    text, dag = _drawn(spec, view)
    assert node in dag and f'"{node}"' in text
    findings = spec_findings(read_dot_text(_without(text, node), file="dag.dot"), dag)
    assert [(f.code, f.message.split(":")[0]) for f in findings] == [("SPEC002", where)]
    assert f"expected `{node}`" in findings[0].message


def test_a_boundary_next_to_a_missing_layer_is_left_to_spec001():
    """Layers 2-3 are missing: the boundaries after layers 1 and 2 touch them and are not
    reported again; the one after layer 0, between two layers drawn, is."""
    text = """digraph {
        input; output;
        l0 [label="Layer 0\\nGPU 0"]; l1 [label="Layer 1\\nGPU 1"];
        input -> l0 -> l1 -> output;
    }"""
    findings = spec_findings(read_dot_text(text, file="t.dot"), contract_dag(layers=4, tp=1, pp=4))
    assert sorted((f.code, f.message.split(" (")[0]) for f in findings) == [
        ("SPEC001", "layers 2-3 of spec `tiny.par` have no node in this DAG"),
        ("SPEC002", "between pipeline stages: no Send/Recv after layer 0")]


def _with_loss(dag):
    """The spec's DAG with node kinds the contract may gain, outside every layer: an LM head per
    GPU and a vocabulary-parallel loss whose AllReduce spans the tensor-parallel group."""
    out = dag.copy()
    last = max((data["layer"], node) for node, data in out.nodes(data=True)
               if data["kind"] == "compute" and data["layer"] is not None and len(data["devices"]) == 1)
    layer, _ = last
    shape = out.nodes[last[1]]["out_shape"]
    gpus = sorted({data["devices"][0] for node, data in out.nodes(data=True)
                   if data["layer"] == layer and data["kind"] == "compute" and len(data["devices"]) == 1})
    common = dict(layer=None, stage=out.nodes[last[1]]["stage"], in_shape=shape, out_shape=shape)
    out.add_node("loss_allreduce_max", kind="comm", op="allreduce", name="allreduce_loss_max",
                 devices=gpus, bytes=4, **common)
    for gpu in gpus:
        ends = [node for node, data in out.nodes(data=True) if data["layer"] == layer
                and data["kind"] == "compute" and data["devices"] == [gpu] and not any(
                    out.nodes[succ]["layer"] == layer for succ in out.successors(node))]
        out.add_node(f"head_gpu{gpu}", kind="compute", op="linear", name="head", devices=[gpu], **common)
        for end in ends:
            out.add_edge(end, f"head_gpu{gpu}")
        out.add_edge(f"head_gpu{gpu}", "loss_allreduce_max")
    return out


def test_node_kinds_outside_the_layers_match_by_id():
    spec = _with_loss(contract_dag(layers=2, tp=2, pp=1, sp=False))
    text = render_dot(spec)
    assert spec_findings(read_dot_text(text, file="t.dot"), spec) == []
    dropped = spec.copy()
    dropped.remove_node("loss_allreduce_max")
    findings = spec_findings(read_dot_text(render_dot(dropped), file="t.dot"), spec)
    assert [(f.code, f.message.split(":")[0]) for f in findings] == [("SPEC002", "outside the layers")]
    assert "expected `loss_allreduce_max`" in findings[0].message
    # a drawing of other tools that leaves the loss out is not asked for its AllReduces
    other = spec_findings(read_dot_file(str(CASES / "per_group.dot")),
                          _with_loss(contract_dag(layers=2, tp=2, pp=1, dp=2, sp=False)))
    assert [f.message.split(":")[0] for f in other] == ["layer 1"]


def test_a_stated_tensor_parallel_degree_is_compared():
    findings = spec_findings(read_dot_file(str(CASES / "tp_degree.dot")),
                             contract_dag(layers=2, tp=8, pp=1))
    assert [(f.code, f.line, f.message) for f in findings] == [(
        "SPEC005", 6, "this DAG is tensor parallel 4 (`stage` says so), spec `tiny.par` has tp 8")]


def test_an_elided_edge_covers_at_most_a_label_range_of_layers():
    """ "... 10^12 layers ..." from layer 0 to layer 10^12 is not read as that many layers: a
    span wider than a label's widest range is some other number."""
    text = """digraph {
        input; output;
        l0 [label="Layer 0"]; far [label="Layer 1000000000000"];
        input -> l0; l0 -> far [label="... 999999999999 layers ..."]; far -> output;
    }"""
    findings = spec_findings(read_dot_text(text, file="t.dot"), contract_dag(layers=2, tp=1, pp=1))
    assert sorted(f.message.split(" (")[0] for f in findings) == [
        "layer 1 of spec `tiny.par` has no node in this DAG",
        "layer 1000000000000 is not in spec `tiny.par`"]


# Two MoE layers as another tool draws them: experts per GPU between an All-to-All dispatch and
# combine drawn once per layer, each GPU's weighted sum after the combine.
HAND_DRAWN_MOE = r"""digraph moe {
  input [label="Input"]
  output [label="Output"]
  subgraph cluster_l0 { label="Layer 0"
    attn0 [label="Attention\nGPU 0"]  attn1 [label="Attention\nGPU 1"]
    router0 [label="Router (top-2)\nGPU 0"]  router1 [label="Router (top-2)\nGPU 1"]
    d [label="All-to-All Dispatch\nGPUs 0-1" shape=ellipse]
    e0 [label="Experts 0-1\nGPU 0"]  e1 [label="Experts 2-3\nGPU 1"]
    c [label="All-to-All Combine\nGPUs 0-1" shape=ellipse]
    w0 [label="Weighted Sum\nGPU 0"]  w1 [label="Weighted Sum\nGPU 1"]
  }
  subgraph cluster_l1 { label="Layer 1"
    xattn0 [label="Attention\nGPU 0"]  xattn1 [label="Attention\nGPU 1"]
    xrouter0 [label="Router (top-2)\nGPU 0"]  xrouter1 [label="Router (top-2)\nGPU 1"]
    xd [label="All-to-All Dispatch\nGPUs 0-1" shape=ellipse]
    xe0 [label="Experts 0-1\nGPU 0"]  xe1 [label="Experts 2-3\nGPU 1"]
    xc [label="All-to-All Combine\nGPUs 0-1" shape=ellipse]
    xw0 [label="Weighted Sum\nGPU 0"]  xw1 [label="Weighted Sum\nGPU 1"]
  }
  input -> attn0; input -> attn1; attn0 -> router0; attn1 -> router1
  router0 -> d; router1 -> d; d -> e0; d -> e1; e0 -> c; e1 -> c; c -> w0; c -> w1
  w0 -> xattn0; w1 -> xattn1; xattn0 -> xrouter0; xattn1 -> xrouter1
  xrouter0 -> xd; xrouter1 -> xd; xd -> xe0; xd -> xe1; xe0 -> xc; xe1 -> xc; xc -> xw0; xc -> xw1
  xw0 -> output; xw1 -> output
}
"""


def test_a_hand_drawn_moe_dag_is_compared_with_its_spec():
    compiled = compile_file(MOE, ["tp=1", "layers=2"])
    graphs = read_dot_text(HAND_DRAWN_MOE, file="moe.dot")
    assert [f for graph in graphs for f in lint_graph(graph, spec_dag=compiled.graph)[1]] == []
    # layer 1's experts summed on each GPU with no combine
    text = HAND_DRAWN_MOE.replace("xe0 -> xc; xe1 -> xc; xc -> xw0; xc -> xw1",
                                  "xe0 -> xw0; xe1 -> xw0; xe0 -> xw1; xe1 -> xw1")
    text = "".join(line for line in text.splitlines(keepends=True) if "xc [label" not in line)
    findings = [f for graph in read_dot_text(text, file="moe.dot")
                for f in lint_graph(graph, spec_dag=compiled.graph)[1]]
    assert sorted((f.code, f.message.split(":")[0]) for f in findings) == [
        ("DAG020", "layer 1"), ("SPEC002", "layer 1")]
    assert "1 All-to-All missing" in next(f.message for f in findings if f.code == "SPEC002")


def test_a_compact_stage_names_the_gpus_it_draws():
    """The compact view draws data-parallel replica 0 only. A middle stage (no input or output
    node spanning every replica) whose label named every GPU of the stage was reported as using
    fewer GPUs than it says (DAG018), as on both expert-parallel specs."""
    compiled = compile_file(SPEC, [*SMALL, "layers=6", "tp=2", "pp=3", "dp=2"])
    text = emit_compact_dot(compiled)
    assert "2 layers (2-3) · GPUs 2-3 (replica 0 of 2)" in text
    graphs = read_dot_text(text, file="dag.compact.dot")
    assert [f for graph in graphs for f in lint_graph(graph, spec_dag=compiled.graph)[1]] == []


# deepseek_v3's full view draws all 1024 GPUs: 35 MB of DOT, about a minute to read and lint.
# Its 64 replicas are copies of one another (the same nodes on other GPU numbers), so that view is
# checked at 4 of them, each still holding 4 experts per GPU, every layer and stage as written;
# the compact view, which draws one replica per stage, at full size. The published training runs
# likewise at 2 of their replicas (24,000 to 32,000 nodes at full size, 15 to 20 s each).
FULL_VIEW_DEFINES = {
    "deepseek_v3": ["dp=4", "ep=4", "experts=16"],
    "gpt3_175b_a100": ["dp=2"],
    "bloom_176b_a100": ["dp=2"],
    "gpt_3b6_a100": ["dp=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(SPEC.parent.glob("*.par")), ids=lambda path: path.stem)
def test_par_build_drawings_of_the_specs_match_them(path):
    """What `par build` writes for every spec of specs/, at full size but for the view above (about 15 s in all)."""
    compiled = compile_file(path, [])
    full = compile_file(path, FULL_VIEW_DEFINES[path.stem]) if path.stem in FULL_VIEW_DEFINES else compiled
    if compiled.phases:  # a serving spec draws each phase's DAG
        drawings = [(emit, view) for _, view in compiled.phases for emit in (emit_dot, emit_compact_dot)]
    else:
        drawings = [(emit_dot, full), (emit_compact_dot, compiled)]
    for emit, drawn in drawings:
        graphs = read_dot_text(emit(drawn), file="dag.dot")
        assert [f for graph in graphs for f in lint_graph(graph, spec_dag=drawn.graph)[1]] == []


@pytest.mark.parametrize("algorithm", ["ring", "allgather"])
def test_context_parallel_drawings_match_their_spec(algorithm):
    """par's own drawings of a context-parallel spec (ring transfers on their GPUs, the merge) lint clean."""
    defines = ["layers=1", "cp=2", "tp=2", "seq=8", "hidden=32", "heads=4", "kv_heads=2", "ffn=64", "vocab=64", f"cp_attention={algorithm}"]
    compiled = compile_file(SPEC.parents[1] / "bench" / "llama3_405b_cp.par", defines)
    for emit in (emit_dot, emit_compact_dot):
        graphs = read_dot_text(emit(compiled), file="dag.dot")
        assert [f for graph in graphs for f in lint_graph(graph, spec_dag=compiled.graph)[1]] == []


def test_a_stage_split_the_spec_has_is_no_finding():
    """The same stages against a spec of two stages split after layer 1: the isolated send is
    that boundary's transfer, and the split is the spec's."""
    findings = spec_findings(read_dot_file(str(CASES / "stage_split.dot")),
                             contract_dag(layers=4, tp=1, pp=2))
    assert findings == []
    (split,) = spec_findings(read_dot_file(str(CASES / "stage_split.dot")),
                             contract_dag(layers=4, tp=1, pp=1))
    assert split.message == ("between pipeline stages: the stages split after layer 1 (cluster "
                             "`cluster_s0`), where spec `tiny.par` has no pipeline boundary")
