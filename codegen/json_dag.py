"""dag.json: the DAG as networkx node-link data, one node or edge per line, in a stable order."""

from __future__ import annotations

import json

import networkx as nx

from par.dsl.dag.types import Dag, plain


def emit_json(graph: Dag) -> str:
    data = nx.node_link_data(plain(graph), edges="edges")
    nodes = data.pop("nodes")
    edges = data.pop("edges")
    head = {key: data[key] for key in sorted(data)}

    def line(item: dict) -> str:
        return json.dumps(item, sort_keys=True, separators=(", ", ": "))

    parts = ["{"]
    for key, value in head.items():
        parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    parts.append('"nodes": [')
    parts.append(",\n".join(line(node) for node in nodes))
    parts.append("],")
    parts.append('"edges": [')
    parts.append(",\n".join(line(edge) for edge in edges))
    parts.append("]")
    parts.append("}")
    return "\n".join(parts) + "\n"


def load_json(text: str) -> nx.DiGraph:
    """The inverse of emit_json (shapes come back as lists)."""
    graph = nx.node_link_graph(json.loads(text), directed=True, multigraph=False, edges="edges")
    assert isinstance(graph, nx.DiGraph)
    return graph
