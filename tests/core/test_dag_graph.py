"""The DAG's container (par.dsl.dag.types.Dag) answers as networkx's DiGraph does, in the same
orders, and the validator's own topological sort and cycle search agree with networkx's."""

import random

import networkx as nx
import pytest

from par.dsl.dag import validate as validator
from par.dsl.dag.compact import CompactDag
from par.dsl.dag.types import Dag


def random_pair(seed: int, *, acyclic: bool) -> tuple[Dag, nx.DiGraph]:
    rng = random.Random(seed)
    ours, theirs = Dag(name="g"), nx.DiGraph(name="g")
    names = [f"n{i}" for i in range(rng.randint(1, 30))]
    rng.shuffle(names)
    for name in names:
        ours.add_node(name, op="add", index=len(ours))
        theirs.add_node(name, op="add", index=len(theirs) - 0)
    for _ in range(rng.randint(0, 60)):
        a, b = rng.sample(range(len(names)), 2) if len(names) > 1 else (0, 0)
        if a == b:
            continue
        if acyclic and a > b:
            a, b = b, a
        ours.add_edge(names[a], names[b], operands=(rng.randint(0, 2),))
        theirs.add_edge(names[a], names[b], operands=ours.edges[names[a], names[b]]["operands"])
    return ours, theirs


def views(graph) -> tuple:
    return (
        graph.graph, list(graph.nodes), list(graph.nodes(data=True)), list(graph.edges), list(graph.edges(data=True)),
        [list(graph.predecessors(n)) for n in graph], [list(graph.successors(n)) for n in graph],
        [graph.in_degree(n) for n in graph], [graph.out_degree(n) for n in graph],
        [list(graph.in_edges(n, data=True)) for n in graph], graph.number_of_nodes(), graph.number_of_edges(),
    )


@pytest.mark.parametrize("seed", range(20))
def test_the_container_answers_as_a_networkx_digraph(seed):
    ours, theirs = random_pair(seed, acyclic=False)
    assert views(ours) == views(theirs)
    converted = nx.DiGraph(ours)  # and converts to one (networkx's conversion orders predecessors its own way)
    assert converted.graph == theirs.graph
    assert list(converted.nodes(data=True)) == list(theirs.nodes(data=True))
    assert list(converted.edges(data=True)) == list(theirs.edges(data=True))
    copy = ours.copy()
    victims = list(ours)[::3]
    copy.remove_nodes_from(victims)
    their_copy = theirs.copy()
    their_copy.remove_nodes_from(victims)
    assert views(copy) == views(their_copy)
    assert views(ours) == views(theirs)  # the copy is its own
    edges = list(copy.edges)[::2]
    copy.remove_edges_from(edges)
    their_copy.remove_edges_from(edges)
    assert views(copy) == views(their_copy)


@pytest.mark.parametrize("seed", range(40))
def test_topological_order_and_cycle_agree_with_networkx(seed):
    ours, theirs = random_pair(seed, acyclic=seed % 2 == 0)
    columns = CompactDag.of(ours)
    order = validator._topological_order(columns.succ, columns.pred)
    if nx.is_directed_acyclic_graph(theirs):
        assert order is not None
        assert [columns.name(node) for node in order] == list(nx.topological_sort(theirs))
    else:
        assert order is None
        cycle = validator._cycle(columns.succ)
        assert [u for u, _ in nx.find_cycle(theirs)] == [columns.name(node) for node in cycle]
