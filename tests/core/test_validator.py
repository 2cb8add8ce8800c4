"""Mutation tests: every way of breaking a DAG is reported, naming the offending node."""

import networkx as nx
import pytest

from par.dsl.dag.validate import validate

SMALL = (
    "model m : gpt { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2  pp 2  microbatches 2 }\nplace allgather after qkv\n"
)


@pytest.fixture
def graph(compile_spec):
    return compile_spec(SMALL).graph.copy()


def messages(graph) -> str:
    return "\n".join(d.message for d in validate(graph))


def test_the_unmutated_dag_is_clean(graph):
    assert validate(graph) == []


def test_deleting_any_edge_is_reported(graph):
    for source, target in list(graph.edges):
        mutated = graph.copy()
        mutated.remove_edge(source, target)
        found = messages(mutated)
        assert source in found or target in found, (source, target, found)


def test_dropping_a_collective_is_reported(graph):
    node = "layer_1_allreduce_attn"
    producers, consumers = list(graph.predecessors(node)), list(graph.successors(node))
    graph.remove_node(node)
    found = messages(graph)
    assert all(name in found for name in producers + consumers)


def test_bypassing_a_collective_is_a_placement_mismatch(graph):
    # What a generator that forgets the AllReduce draws: producers wired straight to consumers.
    node = "layer_0_allreduce_attn"
    pairs = list(zip(sorted(graph.predecessors(node)), sorted(graph.successors(node)), strict=True))
    graph.remove_node(node)
    for producer, consumer in pairs:
        graph.add_edge(producer, consumer, operands=(1,))
    found = messages(graph)
    assert "layer_0_attn_gpu0 gives a tensor that is P but layer_0_h_gpu0 takes R" in found


def test_cutting_a_send_from_its_recv_is_reported(graph):
    graph.remove_edge("stage_0_send_gpu1", "stage_1_recv_gpu3")
    found = messages(graph)
    assert "stage_1_recv_gpu3 is fed by 0 sends" in found
    assert "stage_0_send_gpu1 reaches 0 recvs" in found


def test_swapping_two_collectives_on_one_rank_is_reported(graph):
    first, second = "layer_0_allgather_qkv", "layer_0_allreduce_attn"
    rank_in = {first: "layer_0_qkv_gpu0", second: "layer_0_attn_gpu0"}
    rank_out = {first: "layer_0_ctx_gpu0", second: "layer_0_h_gpu0"}
    for node in (first, second):
        graph.remove_edge(rank_in[node], node)
        graph.remove_edge(node, rank_out[node])
    graph.add_edge(rank_in[first], second, operands=(0,))
    graph.add_edge(rank_in[second], first, operands=(0,))
    graph.add_edge(second, rank_out[first], operands=(0,))
    graph.add_edge(first, rank_out[second], operands=(1,))
    found = messages(graph)
    assert "cycle" in found and first in found and second in found


def test_dropping_a_layer_is_reported(graph):
    layer_nodes = [n for n, d in graph.nodes(data=True) if d["layer"] == 1]
    graph.remove_nodes_from(layer_nodes)
    # Stage 1 held only layer 1: its receives now feed the output directly.
    for rank in (2, 3):
        graph.add_edge(f"stage_1_recv_gpu{rank}", "output", operands=(0,))
    found = messages(graph)
    assert "layer 1 missing on the pipeline path of dp rank 0, tp rank 0" in found
    assert "layer 1 missing on the pipeline path of dp rank 0, tp rank 1" in found


def test_shape_disagreement_is_reported(graph):
    graph.nodes["layer_0_ctx_gpu1"]["in_shape"] = (2, 8, 99)
    assert "layer_0_allgather_qkv gives [2, 8, 96] but layer_0_ctx_gpu1 takes [2, 8, 99]" in messages(graph)


def test_a_collective_fed_twice_by_one_rank_is_reported(graph):
    graph.add_edge("layer_0_ln1_gpu0", "layer_0_allgather_qkv", operands=(0,))
    assert "layer_0_allgather_qkv has several in-edges from gpu 0" in messages(graph)


# A DAG built by hand, without par: two ranks, a column/row pair and the AllReduce it needs.
def hand_built(with_order_bug: bool = False) -> nx.DiGraph:
    g = nx.DiGraph()
    shape, half = (2, 4, 8), (2, 4, 4)
    g.add_node("input", devices=[0, 1], out_shape=shape)
    g.add_node("output", devices=[0, 1], in_shape=shape)
    for r in (0, 1):
        g.add_node(f"up{r}", op="linear", kind="compute", layer=0, devices=[r], in_shape=shape, out_shape=half, arity=1)
        g.add_node(f"down{r}", op="linear", kind="compute", layer=0, devices=[r], in_shape=half, out_shape=shape, arity=1)
        g.add_node(f"side{r}", op="gelu", kind="compute", layer=0, devices=[r], in_shape=shape, out_shape=shape, arity=1)
        g.add_edge("input", f"up{r}", operands=(0,))
        g.add_edge(f"up{r}", f"down{r}", operands=(0,))
        g.add_edge(f"down{r}", "ar", operands=(0,))
        g.add_edge("ar", f"side{r}", operands=(0,))
        g.add_edge(f"side{r}", "output", operands=(0,))
    g.add_node("ar", op="allreduce", kind="comm", layer=0, devices=[0, 1], in_shape=shape, out_shape=shape)
    if with_order_bug:  # a second collective on the same ranks that nothing orders against the first
        g.add_node("ag", op="allgather", kind="comm", layer=0, devices=[0, 1], in_shape=half, out_shape=shape)
        for r in (0, 1):
            g.add_node(f"extra{r}", op="gelu", kind="compute", layer=0, devices=[r], in_shape=shape, out_shape=shape, arity=1)
            g.add_edge(f"up{r}", "ag", operands=(0,))
            g.add_edge("ag", f"extra{r}", operands=(0,))
            g.add_edge(f"extra{r}", "output", operands=(0,))
    return g


def test_a_hand_built_dag_validates():
    assert validate(hand_built()) == []


def test_collectives_in_no_fixed_order_are_reported():
    found = messages(hand_built(with_order_bug=True))
    for rank in (0, 1):
        assert f"gpu {rank} may issue ag and ar in either order: neither depends on the other" in found


def test_a_hand_built_cycle_is_printed():
    g = hand_built()
    g.add_edge("side0", "up0", operands=(1,))
    assert "cycle" in messages(g)


def test_a_recorded_issue_order_chains_independent_collectives():
    g = hand_built(with_order_bug=True)
    assert "may issue ag and ar in either order" in messages(g)
    for before, after in (("ag", "ar"), ("ar", "ag")):  # either order, once it is recorded
        g.nodes[before].pop("after", None)
        g.nodes[after]["after"] = before
        assert validate(g) == [], (before, after)


def test_an_issue_order_naming_no_collective_of_the_group_is_reported():
    g = hand_built()
    g.nodes["ar"]["after"] = "nowhere"
    assert "ar is issued after nowhere, which is no earlier collective of its group" in messages(g)


def test_an_issue_order_against_the_data_is_reported(graph):
    # the AllReduce after attention needs the AllGather's result: it cannot be issued first
    graph.nodes["layer_0_allgather_qkv"]["after"] = "layer_0_allreduce_attn"
    assert "layer_0_allgather_qkv is issued after layer_0_allreduce_attn, which is no earlier collective" in messages(graph)


@pytest.mark.parametrize(
    ("operands", "missing"),
    [((0,), 0), ((2,), 1), ((-1,), 1), ((0, 1), 0), ((1, 1), 1), ((), 1)],
)
def test_an_add_fed_the_wrong_operands_is_reported(graph, operands, missing):
    # The residual add reads the stream (operand 0) and the AllReduce's sum (operand 1); the
    # validator decides the common case without sorting, so each way of getting it wrong is held
    # here: the first operand not fed exactly once is named.
    graph.remove_edge("layer_0_allreduce_mlp", "layer_0_out_gpu1")
    graph.add_edge("layer_0_allreduce_mlp", "layer_0_out_gpu1", operands=operands)
    assert f"layer_0_out_gpu1 lacks operand {missing} of 2" in messages(graph)


def test_a_collective_that_skips_a_member_or_reaches_a_stranger_is_reported(graph):
    skipped = graph.copy()
    skipped.remove_edge("layer_0_allreduce_attn", "layer_0_h_gpu1")
    assert "layer_0_allreduce_attn has no out-edge to gpu 1 of its group" in messages(skipped)
    doubled = graph.copy()
    doubled.remove_edge("layer_0_attn_gpu1", "layer_0_allreduce_attn")
    doubled.add_edge("layer_0_ln2_gpu0", "layer_0_allreduce_attn", operands=(0,))
    found = messages(doubled)
    assert "layer_0_allreduce_attn has several in-edges from gpu 0" in found
    assert "layer_0_allreduce_attn has no in-edge from gpu 1 of its group" in found
    graph.add_edge("layer_0_allreduce_attn", "layer_1_h_gpu2", operands=(1,))
    assert "layer_0_allreduce_attn has an out-edge to layer_1_h_gpu2, outside its group [0, 1]" in messages(graph)
