"""The DAG in columns (par.dsl.dag.compact), as expansion writes it and the validator reads it.

What `to_dag` builds is held byte for byte by the dag.json goldens (tests/core/test_dag_json.py),
written before the DAG was put in columns; here: the columns and the DAG say the same, a compile
builds no DAG until one is read, and the validator, which reads a dict once per run of nodes
sharing it, still finds a defect in a single node of a run."""

import pytest

from par.dsl.dag.compact import CompactDag
from par.dsl.dag.validate import validate

SMALL = (
    "model m : gpt { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2  pp 2  microbatches 2 }\nplace allgather after qkv\n"
)
SPECS = [
    ("baseline_tp8_pp2",),
    ("mixtral_8x7b",),
    ("llama_gqa", "cp=2", "pp=1"),
    ("baseline_tp8_pp2_serve",),
    ("megatron_tp8_pp2", "schedule=interleaved", "chunks=2", "layers=8"),
]


def node_view(compact: CompactDag, number: int) -> dict:
    """A node's attributes as the columns give them."""
    return {**compact.attrs[number], "layer": compact.layer[number], "stage": compact.stage[number], "devices": compact.devices[number]}


def edges(compact: CompactDag, adjacency) -> list[list[tuple[str, dict]]]:
    names = compact.names()
    return [[(names[other], edge) for other, edge in each] for each in adjacency]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: "_".join(spec))
def test_the_columns_and_the_dag_they_build_agree(shipped, spec):
    compiled = shipped(*spec)
    for _, each in compiled.phases or (("train", compiled),):
        compact = each.compact
        dag = compact.to_dag()
        names = compact.names()
        assert list(dag._node) == names
        assert all(dag._node[node] == node_view(compact, number) for number, node in enumerate(names))
        assert [list(dag._succ[node].items()) for node in names] == edges(compact, compact.succ)
        assert [list(dag._pred[node].items()) for node in names] == edges(compact, compact.pred)
        assert dag.graph is compact.graph
        # Put back in columns, each node with a dict of its own: the same columns.
        again = CompactDag.of(dag)
        assert again.names() == names and again.layer == compact.layer and again.devices == compact.devices
        assert edges(again, again.succ) == edges(compact, compact.succ) and edges(again, again.pred) == edges(compact, compact.pred)
        assert compact.to_dag() is dag  # built once


def test_a_compile_builds_no_dag_until_one_is_read(compile_spec):
    compiled = compile_spec(SMALL)
    assert not compiled.compact.built
    assert len(compiled.graph) == len(compiled.compact) and compiled.compact.built


def test_the_nodes_of_a_step_share_one_dict(compile_spec):
    compact = compile_spec(SMALL).compact
    ranks = [number for number, node in enumerate(compact.names()) if node.startswith("layer_0_qkv_gpu")]
    assert len(ranks) == 2 and len({id(compact.attrs[number]) for number in ranks}) == 1
    owned = compact.own(compact.name(ranks[1]))
    assert owned is compact.attrs[ranks[1]] and owned is not compact.attrs[ranks[0]]
    assert owned == node_view(compact, ranks[1])


def a_run(compact: CompactDag) -> tuple[int, int]:
    """Two nodes in a row that share a dict and have one in-edge each, the last such pair: the
    second is mutated."""
    for number in reversed(range(1, len(compact))):
        if compact.attrs[number] is compact.attrs[number - 1] and len(compact.pred[number]) == len(compact.pred[number - 1]) == 1:
            return number - 1, number
    raise AssertionError("no run of stamped nodes")


def messages(compact: CompactDag) -> str:
    return "\n".join(d.message for d in validate(compact))


def test_a_shape_changed_on_one_node_of_a_run_is_reported(compile_spec):
    compact = compile_spec(SMALL).compact
    _, second = a_run(compact)
    compact.own(compact.name(second))["in_shape"] = (999,)
    assert "takes [999]" in messages(compact) and compact.name(second) in messages(compact)


def test_one_node_of_a_run_fed_from_another_step_is_reported(compile_spec):
    compact = compile_spec(SMALL).compact
    first, second = a_run(compact)
    source, edge = compact.pred[second][0]
    wrong = next(number for number in range(second) if compact.attrs[number].get("out_shape") != compact.attrs[source].get("out_shape"))
    compact.succ[source].remove((second, edge))
    compact.pred[second] = [(wrong, edge)]
    compact.succ[wrong].append((second, edge))
    found = messages(compact)
    assert "DAG invariant 5" in found and compact.name(second) in found and compact.name(first) not in found


def test_one_node_of_a_run_cut_off_is_reported(compile_spec):
    compact = compile_spec(SMALL).compact
    _, second = a_run(compact)
    source, edge = compact.pred[second].pop()
    compact.succ[source].remove((second, edge))
    assert f"{compact.name(second)} has no in-edges" in messages(compact)


def test_one_node_of_a_run_moved_to_its_neighbour_s_device_is_reported(compile_spec):
    compact = compile_spec(SMALL).compact
    first, second = a_run(compact)
    compact.devices[second] = compact.devices[first]
    assert "DAG invariant" in messages(compact)


def test_validating_the_columns_or_the_dag_finds_the_same(compile_spec):
    compact = compile_spec(SMALL).compact
    _, second = a_run(compact)
    compact.own(compact.name(second))["in_placement"] = "S(7)"
    from_columns = [d.message for d in validate(compact)]
    assert from_columns and from_columns == [d.message for d in validate(compact.to_dag())]


def test_one_node_of_a_run_fed_the_wrong_operand_is_reported(compile_spec):
    compact = compile_spec(SMALL).compact
    first, second = a_run(compact)
    source, edge = compact.pred[second][0]
    wrong = {"operands": (1,)}
    compact.pred[second] = [(source, wrong)]
    compact.succ[source] = [(target, wrong if target == second else each) for target, each in compact.succ[source]]
    found = messages(compact)
    assert f"{compact.name(second)} lacks operand 0 of 1" in found and compact.name(first) not in found
