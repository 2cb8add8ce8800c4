"""dag.json: the DAG as networkx node-link data, one node or edge per line, in a stable order.

The text is what `networkx.node_link_data(graph, edges="edges")` gives, each node and edge
encoded with sorted keys (tests/core/test_dag_json.py holds the two equal), written here without
networkx: at 65,000 nodes, encoding each node in full costs several times what the rest of the
file does. The nodes of one step of the layer differ only in id, layer, stage and devices, so
each distinct rest is encoded once, as the text between those four (in sorted order, as
sort_keys writes them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from par.dsl.dag.types import Dag

if TYPE_CHECKING:
    import networkx as nx

_LINE = json.JSONEncoder(sort_keys=True, separators=(", ", ": "))
_OWN = ("devices", "id", "layer", "stage")  # what the nodes of one step do not share, in sorted order
_MARK = "\x00{}\x00"  # stands for one of _OWN in a template: JSON writes it \u0000...\u0000


def emit_json(graph: Dag) -> str:
    head = {"directed": True, "graph": graph.graph, "multigraph": False}  # node_link_data's keys, sorted
    parts = ["{"]
    for key, value in head.items():
        parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    ids: dict[str, str] = {}
    lines = []
    templates: dict[tuple, tuple[str, ...] | None] = {}
    for node, data in graph.nodes(data=True):
        ids[node] = encoded_id = json.dumps(node)
        lines.append(_node_line(node, encoded_id, data, templates))
    parts += ['"nodes": [', ",\n".join(lines), "],"]
    lines = []
    operands_text: dict[Any, str] = {}
    for tail, head_id, edge in graph.edges(data=True):
        if len(edge) == 1 and "operands" in edge:  # the DAG's edges: keys operands, source, target in order
            operands = edge["operands"]
            text = operands_text.get(operands)
            if text is None:
                text = operands_text[operands] = _LINE.encode(operands)
            lines.append(f'{{"operands": {text}, "source": {ids[tail]}, "target": {ids[head_id]}}}')
        else:
            lines.append(_LINE.encode({**edge, "source": tail, "target": head_id}))
    parts += ['"edges": [', ",\n".join(lines), "]", "}"]
    return "\n".join(parts) + "\n"


def _node_line(node: str, encoded_id: str, data: Mapping[str, Any], templates: dict[tuple, tuple[str, ...] | None]) -> str:
    """`data` with its id, encoded as one line: through the template of its shared attributes
    when it has all of _OWN, else in full."""
    rest = dict(data)
    try:
        layer, stage, devices = rest.pop("layer"), rest.pop("stage"), rest.pop("devices")
    except KeyError:
        return _full(node, data)
    key = (tuple(rest), tuple(rest.values()))
    try:
        template = templates.get(key, ())
    except TypeError:  # an unhashable value (a list read back from JSON): no template
        return _full(node, data)
    if template == ():
        template = templates[key] = _template(rest)
    if template is None:
        return _full(node, data)
    before, after_devices, after_id, after_layer, after_stage = template
    return f"{before}{_devices(devices)}{after_devices}{encoded_id}{after_id}{_scalar(layer)}{after_layer}{_scalar(stage)}{after_stage}"


def _full(node: str, data: Mapping[str, Any]) -> str:
    item = dict(data)
    item["id"] = node
    return _LINE.encode(item)


def _template(rest: dict) -> tuple[str, ...] | None:
    """The line of a node with these shared attributes, cut where each of _OWN goes (five
    pieces); None when a value of `rest` holds a mark itself."""
    text = _LINE.encode({**rest, **{name: _MARK.format(name) for name in _OWN}})
    pieces = []
    for name in _OWN:
        mark = json.dumps(_MARK.format(name))
        if text.count(mark) != 1:
            return None
        before, _, text = text.partition(mark)
        pieces.append(before)
    return (*pieces, text)


def _scalar(value: Any) -> str:
    if type(value) is int:
        return str(value)
    return json.dumps(value)


def _devices(devices: Any) -> str:
    if type(devices) is list and len(devices) == 1 and type(devices[0]) is int:
        return f"[{devices[0]}]"
    return _LINE.encode(devices)


def load_json(text: str) -> nx.DiGraph:
    """The inverse of emit_json (shapes come back as lists)."""
    import networkx as nx

    graph = nx.node_link_graph(json.loads(text), directed=True, multigraph=False, edges="edges")
    assert isinstance(graph, nx.DiGraph)
    return graph
