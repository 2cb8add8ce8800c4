"""Mixture of experts: the DAG against closed forms (published model sizes, the AllToAll bytes
formula) and properties over ep, experts and top_k."""

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from par.dsl.checks.deployment import Mesh
from par.dsl.compiler import compile_text
from par.dsl.cost import spec_cost
from par.dsl.cost.accounting import model_parameters, transfers
from par.dsl.dag.expand import node_count
from par.dsl.dag.validate import validate

# A Mixtral-style layer, small: every number below is derived from these by hand.
SMALL = """
model m : mixtral {{
  layers {layers}  hidden {hidden}  heads 4  kv_heads 2  ffn 32  expert_ffn {ffn}
  experts {experts}  top_k {top_k}  shared_experts {shared}  capacity_factor {cf}
  batch {batch}  seq {seq}  dtype fp32
}}
mesh {{ tp {tp}  pp {pp}  dp {dp}  ep {ep}  microbatches {micro} {sp} }}
"""


def small(**changes):
    values = dict(layers=2, hidden=64, ffn=48, experts=4, top_k=2, shared=0, cf=1, batch=4, seq=8, tp=1, pp=1, dp=2, ep=2, micro=1, sp="")
    values.update(changes)
    return SMALL.format(**values), values


def nodes_of(graph, op):
    return [(node, data) for node, data in graph.nodes(data=True) if data["op"] == op]


# -- published model sizes ------------------------------------------------------------------------------


def test_mixtral_8x7b_has_the_published_total_and_active_parameters(shipped):
    """Mixtral 8x7B: 46.7 B parameters, 12.9 B active per token (Mistral AI's announcement). The
    DAG holds the layers and the model's ends (the token embedding, the final norm and the untied
    LM head), which every token uses."""
    compiled = shipped("mixtral_8x7b")
    cost = spec_cost(compiled)
    assert cost.experts is not None
    assert abs(cost.model_params - 46.7e9) / 46.7e9 < 0.01
    assert abs(cost.experts.active_params - 12.9e9) / 12.9e9 < 0.01


def test_mixtral_8x7b_parameters_are_the_architectures_closed_form(shipped):
    compiled = shipped("mixtral_8x7b")
    h, kv, f, e = 4096, 8, 14336, 8
    head_dim = 128
    attention = h * (h + 2 * kv * head_dim) + h * h
    experts = e * 3 * h * f
    layer = attention + experts + h * e + 2 * h  # router; two RMSNorm weights
    ends = 2 * 32000 * h + h  # the embedding and the untied head (vocab 32000), the final RMSNorm
    assert model_parameters(compiled.graph) == 32 * layer + ends
    cost = spec_cost(compiled)
    assert cost.experts.routed_params == 32 * experts
    assert cost.experts.active_params == 32 * (layer - experts * (e - 2) // e) + ends


def test_deepseek_shaped_spec_differs_from_the_published_model_by_its_attention(shipped):
    """DeepSeek-V3 has 671 B parameters (without its 14 B multi-token-prediction module). The
    spec replaces multi-head latent attention with 128 heads of 56: per layer
    4 × 7168² = 205.5 M parameters against MLA's 187.1 M (q 7168×1536 + 1536×128·192,
    kv 7168×576 + 512×128·256, o 128·128×7168 and its two norms), 18.4 M more in each of 61 layers."""
    compiled = shipped("deepseek_v3")
    cost = spec_cost(compiled)  # the DAG holds the embedding and the LM head too
    mha = 4 * 7168 * 7168
    mla = 7168 * 1536 + 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 + 512 * 128 * 256 + 128 * 128 * 7168
    published = 671e9
    expected = published + 61 * (mha - mla)
    assert abs(cost.model_params - expected) / published < 0.002
    assert cost.experts.moe_layers == 58 and cost.experts.dense_layers == 3
    assert cost.experts.local_experts == 4


# -- the DAG of one MoE layer ---------------------------------------------------------------------------


def test_the_layer_routes_tokens_through_dispatch_local_experts_combine_and_a_weighted_sum():
    text, _ = small(layers=1, dp=2, ep=2)
    graph = compile_text(text, "t.par").graph
    order = [data["name"] for data in graph.nodes.values() if data["layer"] == 0 and 0 in data["devices"]]
    moe = order[order.index("moe_router"):]
    assert moe == [
        "moe_router", "moe_tokens", "dispatch_moe_tokens", "moe_gate", "moe_up", "moe_act", "moe_prod",
        "moe_down", "combine_moe_down", "moe", "out",
    ]
    (dispatch,) = (data for _, data in nodes_of(graph, "dispatch"))
    assert dispatch["devices"] == [0, 1] and dispatch["in_placement"] == "R" and dispatch["out_placement"] == "E(R)"
    assert "routed" in dispatch["reason"] and dispatch["inserted"]
    # each device's local experts: 4 experts over ep 2, each rank gets its 2 experts' tokens from both
    # A replica's microbatch: batch 2 × seq 8 = 16 tokens, × top_k 2 = 32 routed, 8 per expert;
    # each rank holds 2 of the 4 experts and gets their tokens from both replicas: [2, 16, 64].
    assert graph.nodes["layer_0_moe_tokens_gpu1"]["out_shape"] == (4, 8, 64)
    assert graph.nodes["layer_0_moe_gate_gpu1"]["in_shape"] == (2, 16, 64)


@settings(max_examples=25, deadline=None)
@given(
    ep=st.sampled_from([1, 2, 4]),
    per_rank=st.sampled_from([1, 2]),
    top_k=st.sampled_from([1, 2]),
    tp=st.sampled_from([1, 2]),
    sp=st.booleans(),
    pp=st.sampled_from([1, 2]),
    shared=st.sampled_from([0, 1]),
)
def test_routing_matches_its_closed_forms(ep, per_rank, top_k, tp, sp, pp, shared):
    experts = ep * per_rank * 2
    dp = ep * 1
    text, v = small(experts=experts, top_k=top_k, tp=tp, dp=dp, ep=ep, pp=pp, sp="sp" if sp else "", shared=shared, batch=2 * dp, seq=8)
    compiled = compile_text(text, "t.par")
    graph = compiled.graph
    assert validate(graph) == []
    assert graph.number_of_nodes() == node_count(compiled.program, compiled.layer_programs)
    mesh = Mesh.from_attributes(graph.graph["mesh"])
    tokens = (v["batch"] // dp) * v["seq"]  # one microbatch of one replica
    routed = tokens * top_k * v["hidden"] * 4  # fp32 bytes of its routed tokens
    routings = nodes_of(graph, "dispatch") + nodes_of(graph, "combine")
    if ep == 1:
        assert routings == []
    else:
        # one dispatch and one combine per layer, expert-parallel group and tensor-parallel rank
        assert Counter(data["op"] for _, data in routings) == {"dispatch": 2 * tp * (dp // ep), "combine": 2 * tp * (dp // ep)}
    for _, data in routings:
        members = data["devices"]
        assert len(members) == ep and members == list(mesh.ep_group_of(members[0]))
        held = Fraction(1, tp) if data["in_placement"].endswith("S(seq)") or data["out_placement"].endswith("S(seq)") else 1
        assert data["wire_bytes"] == Fraction(ep - 1, ep) * routed * held
        assert data["backward_wire_bytes"] == data["wire_bytes"]
        assert data["wire_bytes_worst"] == data["wire_bytes"]  # capacity factor 1: balanced is the worst
    # per device: only its local experts' weights, and top_k experts' FLOPs per token
    width = v["ffn"] // tp
    for _, data in nodes_of(graph, "expert_linear"):
        assert data["params"] == experts // ep * v["hidden"] * width
        assert data["flops"] == 2 * tokens * top_k * v["hidden"] * width
        assert data["in_shape"][0] == experts // ep


def test_the_worst_case_is_the_capacity_factor_up_to_every_token_the_rank_holds():
    for cf, factor in ((Fraction(5, 4), Fraction(5, 4)), (3, Fraction(2))):  # ep 2: at most all of them, 2× the balanced half
        text, _ = small(cf=float(cf), ep=2, dp=2)
        for _, data in nodes_of(compile_text(text, "t.par").graph, "dispatch"):
            assert data["wire_bytes_worst"] == data["wire_bytes"] * factor


def test_expert_gradients_are_reduced_over_the_ranks_holding_the_same_experts():
    text, _ = small(dp=4, ep=2, batch=8)
    graph = compile_text(text, "t.par").graph
    sync = [item for item in transfers(graph) if item.phase == "gradients" and item.senders == (0,)]
    groups = sorted(item.group for item in sync)
    assert groups == [(0, 1, 2, 3), (0, 2)]  # dense over dp; experts over the replicas holding experts 0-1
    experts = sum(data["params"] for _, data in nodes_of(graph, "expert_linear") if data["devices"] == [0])
    (expert_sync,) = (item for item in sync if item.group == (0, 2))
    assert expert_sync.bytes == experts * 4  # fp32 gradients: 2(n-1)/n with n 2


def test_with_tensor_parallel_experts_the_tp_collectives_are_those_of_a_dense_mlp():
    text, _ = small(tp=2, ep=2, dp=2)
    program = compile_text(text, "t.par").program
    steps = {step.name: step for step in program.steps}
    assert (steps["moe_gate"].in_placement.text, steps["moe_gate"].out_placement.text) == ("E(R)", "E(S(-1))")
    assert steps["moe_down"].out_placement.text == "E(P)"
    # the partial sums are combined, summed by the router's weights, then AllReduced once
    assert steps["combine_moe_down"].out_placement.text == "P" and steps["allreduce_moe"].op == "allreduce"
    # the dispatched tokens enter the column-parallel experts: the copy goes before the dispatch
    assert steps["moe_tokens"].copied and not steps["dispatch_moe_tokens"].copied
    assert steps["dispatch_moe_tokens"].pair == "dispatch"


def test_strict_mode_names_the_routing_to_write_and_accepts_it_written():
    text, _ = small()
    with pytest.raises(Exception) as missing:
        compile_text(text + "strict\nplace allreduce after attn, moe\n", "t.par")
    hints = [d.hint for d in missing.value.diagnostics]
    assert "write `place dispatch after moe_tokens`" in hints
    assert "write `place combine after moe_down`" in hints
    written = text + "strict\nplace allreduce after attn, moe\nplace dispatch after moe_tokens\nplace combine after moe_down\n"
    graph = compile_text(written, "t.par").graph
    assert all(not data["inserted"] for _, data in nodes_of(graph, "dispatch"))


# -- a block per range of layers ----------------------------------------------------------------------------

DEEPSEEK = """
model d : llama 0..0, deepseek 1..layers - 1 {
  layers 4  hidden 64  heads 4  ffn 96  expert_ffn 16  experts 8  top_k 2  shared_experts 1
  batch 8  seq 8  dtype fp32
}
mesh { pp 2  dp 4  ep 4  microbatches 2 }
"""


def test_dense_first_layers_then_moe_layers_split_over_stages():
    compiled = compile_text(DEEPSEEK, "t.par")
    graph = compiled.graph
    routed = {data["layer"] for _, data in nodes_of(graph, "router")}
    dense = {data["layer"] for _, data in graph.nodes(data=True) if data["name"] == "mlp"}
    assert routed == {1, 2, 3} and dense == {0}
    assert [(first, last) for first, last, _ in compiled.layer_programs] == [(0, 0), (1, 3)]
    # the shared expert: a dense SwiGLU MLP of shared_experts × expert_ffn beside the routed ones
    shared = graph.nodes["layer_1_moe_shared_gate_gpu0"]
    assert shared["out_shape"][-1] == 16 and shared["op"] == "linear"
    assert validate(graph) == []
    assert graph.number_of_nodes() == node_count(compiled.program, compiled.layer_programs)


# -- the validator and lint hold MoE DAGs to the same rules ------------------------------------------------


def small_graph(**changes):
    text, _ = small(layers=1, **changes)
    return compile_text(text, "t.par").graph


def test_a_dispatch_missing_a_member_breaks_invariant_3():
    graph = small_graph(dp=2, ep=2)
    graph.remove_edge("layer_0_moe_tokens_gpu1", "layer_0_dispatch_moe_tokens")
    messages = [d.message for d in validate(graph)]
    assert any("invariant 3" in m and "no in-edge from gpu 1" in m for m in messages)


def test_a_dropped_combine_is_caught_by_shapes_and_placements():
    """The mutation the generated code's test makes: the experts' results reach unpermute
    without coming back: routed [2, 16, 64] on E(R) where [4, 8, 64] of this replica is due."""
    graph = small_graph(dp=2, ep=2)
    for rank in (0, 1):
        graph.add_edge(f"layer_0_moe_down_gpu{rank}", f"layer_0_moe_gpu{rank}", operands=(0,))
    graph.remove_node("layer_0_combine_moe_down")
    messages = [d.message for d in validate(graph)]
    assert any("gives [2, 16, 64] but layer_0_moe_gpu0 takes [4, 8, 64]" in m for m in messages)
    assert any("is E(R) but layer_0_moe_gpu1 takes R" in m for m in messages)


def test_experts_on_the_wrong_rank_break_the_routing_group():
    """A rank of another expert-parallel group fed into this one's dispatch: not a member."""
    graph = small_graph(dp=4, ep=2, batch=8)
    graph.add_edge("layer_0_moe_tokens_gpu2", "layer_0_dispatch_moe_tokens_ep0", operands=(0,))
    messages = [d.message for d in validate(graph)]
    assert any("in-edge from layer_0_moe_tokens_gpu2, outside its group [0, 1]" in m for m in messages)


def test_lint_spec_reads_our_drawing_of_an_moe_dag_as_the_spec():
    from par.codegen.dot.emit import emit_dot
    from par.lint.dot_reader import read_dot_text
    from par.lint.lint import lint_graph

    text, _ = small(tp=2, dp=2, ep=2)
    compiled = compile_text(text, "t.par")
    (drawn,) = read_dot_text(emit_dot(compiled), file="t.dot")
    findings = lint_graph(drawn, spec_dag=compiled.graph, spec_name="t.par")[1]
    assert [f.code for f in findings if f.code.startswith("SPEC")] == []
    # without its routing the drawing misses the spec's All-to-Alls
    for node in [node for node in list(compiled.graph) if compiled.graph.nodes[node]["op"] in ("dispatch", "combine")]:
        for source in list(compiled.graph.predecessors(node)):
            for target in list(compiled.graph.successors(node)):
                compiled.graph.add_edge(source, target, operands=(0,))
    spec = compile_text(text, "t.par").graph
    for node in [node for node in list(compiled.graph) if compiled.graph.nodes[node]["op"] in ("dispatch", "combine")]:
        compiled.graph.remove_node(node)
    (drawn,) = read_dot_text(emit_dot(compiled), file="t.dot")
    codes = [f.message for f in lint_graph(drawn, spec_dag=spec, spec_name="t.par")[1] if f.code == "SPEC002"]
    assert codes and all("All-to-All missing" in message for message in codes)


@settings(max_examples=15, deadline=None)
@given(dense=st.integers(1, 3), pp=st.sampled_from([1, 2, 4]), ep=st.sampled_from([1, 2, 4]), sp=st.booleans())
def test_dense_and_moe_layers_in_any_split(dense, pp, ep, sp):
    text = f"""
model d : llama 0..{dense - 1}, deepseek {dense}..layers - 1 {{
  layers 4  hidden 64  heads 4  ffn 96  expert_ffn 16  experts 8  top_k 2  shared_experts 1
  batch 8  seq 8  dtype fp32
}}
mesh {{ tp 2  pp {pp}  dp 4  ep {ep}  microbatches 2 {"sp" if sp else ""} }}
"""
    compiled = compile_text(text, "t.par")
    graph = compiled.graph
    assert validate(graph) == []
    assert graph.number_of_nodes() == node_count(compiled.program, compiled.layer_programs)
    routed = {data["layer"] for _, data in nodes_of(graph, "router")}
    assert routed == set(range(dense, 4))
    assert len(nodes_of(graph, "dispatch")) == (0 if ep == 1 else (4 - dense) * 2 * (4 // ep))


def test_routed_tokens_kept_for_backward_are_the_dispatched_tokens_and_the_swiglu_tensors():
    """Per layer, a rank keeps its routed tokens (tokens × top_k × hidden) for the gate and up
    linears, and for SwiGLU four tensors of tokens × top_k × expert_ffn: gate, up, their silu
    and their product. fp32, 2 layers, 16 tokens a replica, top 2, hidden 64, expert_ffn 48."""
    text, _ = small(layers=2, dp=2, ep=2, cf=1.5)
    cost = spec_cost(compile_text(text, "t.par"))
    per_layer = 16 * 2 * (64 + 4 * 48) * 4
    assert cost.experts.routed_activations == 2 * per_layer
    assert cost.experts.routed_activations_worst == 1.5 * 2 * per_layer


def test_the_summary_lines_name_each_range_s_block_and_the_expert_parallel_degree():
    from par.codegen.summary import mesh_line, model_line

    graph = compile_text(DEEPSEEK, "t.par").graph
    assert model_line(graph.graph, drawing=False).startswith("model: d (llama 0-0, deepseek 1-3), 4 layers")
    assert mesh_line(graph.graph, drawing=True).endswith(", experts over ep 4")
    dense = compile_text(DEEPSEEK.replace("ep 4", "ep 1"), "t.par").graph
    assert "experts over" not in mesh_line(dense.graph, drawing=True)


# -- which ranks form an expert-parallel group (docs/language.md) ---------------------------------------


def _mesh(tp, pp, dp, ep, etp=None):
    stages = tuple((stage, stage) for stage in range(pp))
    return Mesh(tp, pp, dp, 1, stages, "1f1b", False, "fp32", ep=ep, etp=etp)


@settings(max_examples=40, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 3]), groups=st.sampled_from([1, 2, 3]), ep=st.sampled_from([1, 2, 4]))
def test_with_etp_tp_a_group_is_one_tp_rank_of_ep_consecutive_replicas(tp, pp, groups, ep):
    """The fold at etp = tp is the replica rule, written here from the rank numbering alone."""
    dp = groups * ep
    mesh = _mesh(tp, pp, dp, ep)
    for rank in range(mesh.world):
        dp_rank, stage, tp_rank = rank // (tp * pp), rank // tp % pp, rank % tp
        first = dp_rank - dp_rank % ep
        assert mesh.ep_group_of(rank) == tuple((d * pp + stage) * tp + tp_rank for d in range(first, first + ep))
        assert mesh.expert_dp_group_of(rank) == tuple((d * pp + stage) * tp + tp_rank for d in range(dp_rank % ep, dp, ep))


def test_etp_below_tp_folds_the_tp_ranks_into_the_expert_parallel_group():
    # tp 4, dp 2, etp 2, ep 2: per stage 8 ranks; etp pairs (0,1) (2,3) ..., ep pairs of those
    mesh = _mesh(4, 1, 2, 2, etp=2)
    assert [mesh.expert_coords(rank) for rank in range(8)] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert mesh.ep_group_of(1) == (1, 3) and mesh.ep_group_of(6) == (4, 6)
    assert mesh.expert_dp_group_of(2) == (2, 6)
    # etp 1 with tp 2 and dp 1: the two tp ranks are the expert-parallel group (Megatron's folding)
    assert _mesh(2, 1, 1, 2, etp=1).ep_group_of(0) == (0, 1)


@settings(max_examples=40, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), etp_div=st.sampled_from([1, 2, 4]), dp=st.sampled_from([1, 2, 4]), ep=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2]))
def test_the_groups_partition_each_stage(tp, etp_div, dp, ep, pp):
    etp = max(1, tp // etp_div)
    if (tp * dp) % (etp * ep):
        return
    mesh = _mesh(tp, pp, dp, ep, etp=etp)
    for stage in range(pp):
        ranks = set(mesh.stage_ranks(stage))
        groups = {mesh.ep_group_of(rank) for rank in ranks}
        replicas = {mesh.expert_dp_group_of(rank) for rank in ranks}
        for family, size in ((groups, ep), (replicas, tp * dp // (etp * ep))):
            assert all(len(group) == size for group in family)
            assert sorted(rank for group in family for rank in group) == sorted(ranks)  # disjoint, cover the stage
        for rank in ranks:
            assert rank in mesh.ep_group_of(rank) and rank in mesh.expert_dp_group_of(rank)
            # one member of each expert-parallel group holds each expert share once
            assert len(set(mesh.ep_group_of(rank)) & set(mesh.expert_dp_group_of(rank))) == 1
