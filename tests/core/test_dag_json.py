"""dag.json: node-link data in a stable order that loads back into the same, valid DAG."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from par.codegen.json_dag import emit_json, load_json
from par.dsl.dag.validate import validate

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip(shipped):
    graph = shipped("layerwise").graph
    loaded = load_json(emit_json(graph))
    assert list(loaded.nodes) == list(graph.nodes)
    assert set(loaded.edges) == set(graph.edges)
    assert loaded.graph["mesh"]["tp"] == 4
    assert validate(loaded) == []
    data = json.loads(emit_json(graph))
    assert {"nodes", "edges", "graph", "directed"} <= set(data)
    node = next(n for n in data["nodes"] if n["id"] == "layer_0_allreduce_attn")
    for key in ("op", "kind", "layer", "stage", "devices", "in_shape", "out_shape", "dtype", "flops", "bytes", "wire_bytes", "src", "reason"):
        assert key in node


@pytest.mark.slow  # two fresh processes; tests/build/test_build_determinism.py keeps a fast one
def test_build_writes_dag_json_identically_under_any_hash_seed():
    """The dag.json renderer `par build` uses, in fresh processes: no Graphviz run for a JSON file."""
    code = (
        "import sys\n"
        "from par.codegen.artifacts import renderers\n"
        "from par.dsl.compiler import compile_file\n"
        "text = dict(renderers())['dag.json'](compile_file(sys.argv[1], ['layers=8']))\n"
        "sys.stdout.buffer.write(text if isinstance(text, bytes) else text.encode())\n"
    )
    outputs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code, str(ROOT / "specs" / "llama_gqa.par")],
            check=True, capture_output=True, env=env, timeout=300, cwd=ROOT,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith(b"{")


def test_the_compiler_never_imports_torch():
    code = (
        "import sys, par.cli, par.codegen.artifacts\n"
        "from par.dsl.compiler import compile_file\n"
        f"compile_file({str(ROOT / 'specs' / 'baseline_tp8_pp2.par')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def node_link_reference(graph) -> str:
    """dag.json as networkx's node_link_data and one encoder call per line give it: the oracle."""
    import networkx as nx

    data = nx.node_link_data(graph, edges="edges")
    nodes, edges = data.pop("nodes"), data.pop("edges")

    def line(item: dict) -> str:
        return json.dumps(item, sort_keys=True, separators=(", ", ": "))

    head = [f"{json.dumps(key)}: {json.dumps(data[key], sort_keys=True)}," for key in sorted(data)]
    body = ['"nodes": [', ",\n".join(map(line, nodes)), "],", '"edges": [', ",\n".join(map(line, edges)), "]"]
    return "\n".join(["{", *head, *body, "}"]) + "\n"


@pytest.mark.parametrize("name", ["layerwise", "llama_gqa", "megatron_tp8_pp2"])
def test_dag_json_is_networkx_node_link_data(shipped, name):
    graph = shipped(name).graph
    assert emit_json(graph) == node_link_reference(graph)


def test_dag_json_of_odd_attributes_is_networkx_node_link_data(shipped):
    # Attributes no compiled DAG has take the long way and still give node_link_data's text.
    graph = shipped("layerwise").graph.copy()
    nodes = list(graph.nodes)
    graph.nodes[nodes[1]]["in_shape"] = list(graph.nodes[nodes[1]]["in_shape"])  # unhashable
    graph.nodes[nodes[2]]["reason"] = "looks like a mark: \x00id\x00 and {braces}"
    graph.nodes[nodes[3]]["devices"] = [3, 1]
    graph.nodes[nodes[4]]["layer"] = True
    del graph.nodes[nodes[5]]["stage"]
    graph.nodes[nodes[6]]["extra"] = [{"a": 1}, {"b": 2}]
    graph.add_edge(nodes[1], nodes[6], operands=(0,), note="extra")
    text = emit_json(graph)
    assert text == node_link_reference(graph)
    assert json.loads(text)["nodes"][2]["reason"].startswith("looks like a mark: \x00id\x00")


CONTEXT_PARALLEL = """
model cp_small : llama {
  layers 2  hidden 256  heads 8  kv_heads 2  ffn 512
  vocab 1024  batch 1  seq 2048  dtype bf16
}
mesh { tp 2  cp 4  cp_attention %s  sp }
"""


@pytest.mark.parametrize("form", ["allgather", "ring"])
def test_dag_json_of_context_parallelism_is_networkx_node_link_data(form):
    # Its attention steps carry their operands' shapes as lists, a new list per node: they share
    # their step's text as tuples would.
    from par.dsl.compiler import compile_text

    graph = compile_text(CONTEXT_PARALLEL % form, "cp_small.par").graph
    assert any(isinstance(data.get("operand_shapes"), list) for _, data in graph.nodes(data=True))
    assert emit_json(graph) == node_link_reference(graph)


def test_dag_json_of_operand_lists_is_networkx_node_link_data(shipped):
    # A list of tuples shares the text of the same tuple of tuples; a list in a list takes the long way.
    graph = shipped("layerwise").graph.copy()
    a, b, c, d = [node for node, data in graph.nodes(data=True) if data["kind"] == "compute"][:4]
    shape = tuple(graph.nodes[a]["in_shape"])
    graph.nodes[a]["operand_shapes"] = [shape, (1, 2)]
    graph.nodes[b]["operand_shapes"] = (shape, (1, 2))
    graph.nodes[c]["operand_shapes"] = [list(shape), [1, 2]]
    graph.nodes[d]["operand_shapes"] = [shape, (2, 1)]
    assert emit_json(graph) == node_link_reference(graph)


def test_dag_json_of_odd_ids_keys_and_edges_is_networkx_node_link_data(shipped):
    # What the fast paths assume of a compiled DAG, broken one at a time: ids JSON must escape
    # (in the nodes and in the edges' ends), a node's keys in another order or one key fewer
    # than the node before, and an edge whose operands are a list.
    from par.dsl.dag.types import Dag

    shipped_graph = shipped("layerwise").graph
    new_names = dict(zip(list(shipped_graph.nodes)[2:8:5], ['odd "id" é', "two words"], strict=True))
    graph = Dag(**shipped_graph.graph)
    for node, data in shipped_graph.nodes(data=True):
        graph.add_node(new_names.get(node, node), **data)
    for tail, head, data in shipped_graph.edges(data=True):
        graph.add_edge(new_names.get(tail, tail), new_names.get(head, head), **data)
    nodes = list(graph.nodes)
    assert set(graph.nodes[nodes[3]]) == set(graph.nodes[nodes[4]])
    items = list(graph.nodes[nodes[4]].items())
    graph.nodes[nodes[4]].clear()
    graph.nodes[nodes[4]].update(reversed(items))
    del graph.nodes[nodes[5]]["layer"]
    graph.nodes[nodes[5]].update(note="as many keys", more="as the node before")
    assert len(graph.nodes[nodes[5]]) == len(graph.nodes[nodes[4]])
    graph.add_edge(nodes[8], nodes[9], operands=[0, 1])
    assert emit_json(graph) == node_link_reference(graph)
