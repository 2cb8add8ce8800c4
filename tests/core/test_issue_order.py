"""Collectives that do not depend on each other are issued in program order, and the DAG says so (`after`)."""

import networkx as nx

from par.dsl.dag.validate import COMMUNICATION

LLAMA = (
    "model m : llama { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2 }\nplace allgather after qkv, gate, up\n"
)


def test_the_gathers_of_gate_and_up_are_recorded_in_program_order(compile_spec):
    compiled = compile_spec(LLAMA)  # raised invariant 6 before: the two gathers were unordered
    graph = compiled.graph
    recorded = {node: data["after"] for node, data in graph.nodes(data=True) if "after" in data}
    assert recorded == {f"layer_{i}_allgather_up": f"layer_{i}_allgather_gate" for i in range(2)}
    order = [step.name for step in compiled.program.steps if step.kind == "comm"]
    assert order.index("allgather_gate") < order.index("allgather_up")  # the order model.py issues them in


def test_every_rank_issues_one_chain_once_the_recorded_order_is_an_edge(compile_spec):
    graph = compile_spec(LLAMA).graph
    ordered = nx.DiGraph(graph)
    ordered.add_edges_from((data["after"], node) for node, data in graph.nodes(data=True) if "after" in data)
    for rank in range(2):
        issued = [node for node, data in graph.nodes(data=True) if data["op"] in COMMUNICATION and rank in data["devices"]]
        for before, after in zip(issued, issued[1:], strict=False):
            assert nx.has_path(ordered, before, after), (before, after)
        for node, data in graph.nodes(data=True):
            if "after" in data:
                assert not nx.has_path(graph, data["after"], node)  # recorded only where the data leaves it open


def test_collectives_chained_by_their_data_record_nothing(shipped):
    for stem in ("megatron_tp8_pp2", "llama_gqa", "baseline_tp8_pp2"):
        graph = shipped(stem, "layers=2", "pp=1", "dp=1").graph
        assert not any("after" in data for _, data in graph.nodes(data=True)), stem
