"""The DAG's types (par.dsl.dag.types) describe what expansion writes, and their enumerations
are the registry's names: the types cannot drift from the DAG or from the registry."""

import types
import typing
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest

from par.dsl.checks.deployment import DTYPE_BYTES
from par.dsl.dag import ids
from par.dsl.dag.types import (
    CollectiveOp,
    ComputeOp,
    EdgeAttrs,
    GraphAttrs,
    IoOp,
    Kind,
    ModelAttrs,
    NodeAttrs,
    OpName,
    PlacementKind,
    PlacementText,
    Severity,
)
from par.dsl.diagnostics import error, note, warning
from par.dsl.lowering.placement import PLACEMENTS, S_LAST, S_SEQ, P, R
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.registry.ops import COMPUTE_OPS, MODEL_OPS, OPS

# Between them: every kind of node (compute, collectives, slices of the input and inside the
# layer, send and recv), every optional attribute, and data-parallel replicas.
CASES = [
    ("megatron_tp8_pp2", ()),
    ("megatron_tp8_pp2", ("sp=on", "dp=2")),
    ("baseline_tp8_pp2", ()),
    ("layerwise", ()),
    # 4 of llama_gqa's 32 layers, on its whole mesh: the other layers' nodes are the same nodes again
    ("llama_gqa", ("layers=4",)),
    ("llama_gqa", ("layers=4", "tie_embeddings=true", "positions=learned")),  # the head's own copy of a tied embedding
    ("mixtral_8x7b", ("layers=4", "pp=2", "dp=2", "ep=2", "batch=4", "seq=64", "microbatches=2")),
    ("deepseek_v3", ("layers=4", "pp=2", "stages=0..1,2..3", "dp=4", "ep=4", "batch=8", "seq=64", "microbatches=2")),
]
# A block with a bias (and rope), which no shipped spec has.
BIASED = "model m : qwen2 { layers 2  hidden 64  heads 4  kv_heads 2  batch 4  seq 8 }\nmesh { tp 2 }\n"


def fits(value, hint) -> bool:
    """Whether `value` is of type `hint`, for the types the DAG's TypedDicts use."""
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, option) for option in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(fits(v, item) for v in value)
    if origin is tuple:
        item, _ = get_args(hint)  # tuple[X, ...]
        return isinstance(value, tuple) and all(fits(v, item) for v in value)
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and not typed_dict_problems(value, hint)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def typed_dict_problems(data: dict, typed) -> list[str]:
    """What in `data` the TypedDict `typed` does not describe: missing, unknown or mistyped keys."""
    hints = get_type_hints(typed)
    problems = [f"missing {key}" for key in sorted(typed.__required_keys__ - set(data))]
    problems += [f"unknown {key}" for key in sorted(set(data) - set(hints))]
    problems += [f"{key}={data[key]!r}" for key in sorted(set(data) & set(hints)) if not fits(data[key], hints[key])]
    return problems


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "-".join((case[0], *case[1])))
def graph(request, shipped):
    stem, defines = request.param
    return shipped(stem, *defines).graph


def test_every_node_is_a_node_attrs(graph):
    for node, data in graph.nodes(data=True):
        assert not typed_dict_problems(data, NodeAttrs), (node, typed_dict_problems(data, NodeAttrs))


def test_every_edge_and_the_graph_are_typed(graph):
    for source, target, data in graph.edges(data=True):
        assert not typed_dict_problems(data, EdgeAttrs), (source, target)
    assert not typed_dict_problems(graph.graph, GraphAttrs), typed_dict_problems(graph.graph, GraphAttrs)


def test_a_biased_blocks_nodes_are_node_attrs(compile_spec):
    for node, data in compile_spec(BIASED).graph.nodes(data=True):
        assert not typed_dict_problems(data, NodeAttrs), (node, typed_dict_problems(data, NodeAttrs))


# Independent AllGathers (gate, up): the later one records the order every rank issues them in (`after`).
UNORDERED_GATHERS = (
    "model m : llama { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2 }\nplace allgather after qkv, gate, up\n"
)


# Context parallelism: attention as ring steps, with sends and recvs that name their ring.
RING = (
    "model m : llama { layers 1  hidden 32  heads 4  kv_heads 2  ffn 64  batch 2  seq 8  dtype fp32 }\n"
    "mesh { tp 2  cp 2 }\n"
)

# The interleaved schedule: sends and recvs that name the model chunk they leave or enter.
INTERLEAVED = (
    "model m : gpt { layers 4  hidden 32  heads 4  batch 4  seq 8  dtype fp32 }\n"
    "mesh { pp 2  microbatches 2  schedule interleaved  chunks 2 }\n"
)


# Activation recomputation: the nodes the backward runs again say so (`recompute`), and the mesh names it.
RECOMPUTED = (
    "model m : llama { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2  sp  recompute full }\n"
)


def test_every_attribute_the_type_names_is_written(shipped, compile_spec):
    """No key of NodeAttrs that expansion never writes: the union over the cases is all of them."""
    graphs = [shipped(stem, *defines).graph for stem, defines in CASES] + [
        compile_spec(BIASED).graph,
        compile_spec(RING).graph,
        compile_spec(UNORDERED_GATHERS).graph,
        compile_spec(RECOMPUTED).graph,
        compile_spec(INTERLEAVED).graph,
    ]
    for graph in graphs[-3:]:
        assert not typed_dict_problems(graph.graph, GraphAttrs), typed_dict_problems(graph.graph, GraphAttrs)
        for node, data in graph.nodes(data=True):
            assert not typed_dict_problems(data, NodeAttrs), (node, typed_dict_problems(data, NodeAttrs))
    written = {key for graph in graphs for _, data in graph.nodes(data=True) for key in data}
    assert written == set(get_type_hints(NodeAttrs))


def test_the_checker_rejects_what_the_types_do_not_describe(shipped):
    data = dict(next(iter(shipped("layerwise").graph.nodes.values())))
    assert not typed_dict_problems(data, NodeAttrs)
    assert typed_dict_problems({**data, "colour": "red"}, NodeAttrs) == ["unknown colour"]
    assert typed_dict_problems({**data, "op": "conv2d"}, NodeAttrs) == ["op='conv2d'"]
    assert typed_dict_problems({**data, "in_placement": "S(0)"}, NodeAttrs) == ["in_placement='S(0)'"]
    assert typed_dict_problems({key: value for key, value in data.items() if key != "src"}, NodeAttrs) == ["missing src"]


def test_op_names_are_the_registrys():
    assert set(get_args(ComputeOp)) == set(COMPUTE_OPS) == set(OPS) | set(MODEL_OPS)
    assert set(get_args(CollectiveOp)) == set(COLLECTIVES)
    assert set(get_args(IoOp)) == {ids.INPUT, ids.OUTPUT}
    assert {name for part in get_args(OpName) for name in get_args(part)} == set(COMPUTE_OPS) | set(COLLECTIVES) | {ids.INPUT, ids.OUTPUT}


def test_node_kinds_are_the_registrys():
    assert set(get_args(Kind)) == {"compute"} | {spec.kind for spec in COLLECTIVES.values()}


def test_dtypes_and_placements_and_severities():
    assert set(get_args(get_type_hints(ModelAttrs)["dtype"])) == set(DTYPE_BYTES)
    local = {p.text for p in (R, P, S_SEQ, S_LAST)}
    assert set(get_args(PlacementText)) == set(PLACEMENTS) == local | {f"E({text})" for text in local}
    assert all(str(placement) == text for text, placement in PLACEMENTS.items())
    assert set(get_args(PlacementKind)) == {p.kind for p in PLACEMENTS.values()}
    made = {make("m", None).severity for make in (error, warning, note)}
    assert made == set(get_args(Severity))
