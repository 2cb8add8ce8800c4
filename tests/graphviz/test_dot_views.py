"""The drawing's shared-text shortcut (NodeViews) writes exactly what node_view writes, node by node."""

import pytest

from par.codegen.dot.clusters import ClusterTree
from par.codegen.dot.view import NodeViews, attr_list, node_view
from par.dsl.compiler import compile_text

SPECS = {
    "gpt_pp_dp": "model m : gpt { layers 3  hidden 64  heads 4  ffn 256  batch 8  seq 8  dtype fp32 }\nmesh { tp 2  pp 2  dp 2 }\n",
    "llama_sp": "model m : llama { layers 2  hidden 64  heads 4  kv_heads 4  ffn 128  batch 4  seq 8  dtype bf16 }\nmesh { tp 4  sp }\n",
    "single": "model m : gpt { layers 1  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }\nmesh { tp 1 }\n",  # nothing shared: every step once
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_node_views_match_node_view(name):
    graph = compile_text(SPECS[name], "m.par").graph
    views = NodeViews()
    extra = (("group", '"column_0_1"'),)
    for node_id, data in graph.nodes(data=True):
        assert views.node(node_id, data) == node_view(node_id, data)
        assert views.node(node_id, data, extra=attr_list(extra)) == node_view(node_id, data, extra=extra)
        # Shapes read back as lists (unhashable) and a hostile reason take the long way, alike.
        odd = {**data, "in_shape": list(data["in_shape"]), "reason": 'a "quoted" <reason> & \\N'}
        assert views.node(node_id, odd) == node_view(node_id, odd)
    if name != "single":
        assert len(views.shared) < graph.number_of_nodes()  # the nodes of a step did share their text


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_drawing_places_each_gpus_nodes_as_node_view_writes_them(name):
    compiled = compile_text(SPECS[name], "m.par")
    tree = ClusterTree(compiled.deployment.mesh)
    tree.place_all(compiled.graph.nodes(data=True))
    for rank, node_ids in tree.members.items():
        column = tree.column(rank)
        expected = [node_view(node_id, compiled.graph.nodes[node_id], extra=column) for node_id in node_ids]
        assert tree.gpus[rank].nodes == expected
    assert sum(map(len, tree.members.values())) > 0
