"""dag.json: the DAG as networkx node-link data, one node or edge per line, in a stable order.

The text is what `networkx.node_link_data(graph, edges="edges")` gives, each node and edge
encoded with sorted keys (tests/core/test_dag_json.py holds the two equal), written here without
networkx: at 65,000 nodes, encoding each node in full costs several times what the rest of the
file does. The nodes of one step of the layer differ only in id, layer, stage and devices, so
each distinct rest is encoded once, as the text between those four (in sorted order, as
sort_keys writes them). The rest is found by its keys and values, read in one call; a list
among them (the operand shapes of context parallelism's attention, a new list per node) is
looked up as the tuple JSON writes alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from par.dsl.dag.types import Dag

if TYPE_CHECKING:
    import networkx as nx

_LINE = json.JSONEncoder(sort_keys=True, separators=(", ", ": "))
_OWN = ("devices", "id", "layer", "stage")  # what the nodes of one step do not share, in sorted order
_PER_NODE = ("layer", "stage", "devices")  # _OWN's attributes (the id is none)
_MARK = "\x00{}\x00"  # stands for one of _OWN in a template: JSON writes it \u0000...\u0000


def emit_json(graph: Dag) -> str:
    head = {"directed": True, "graph": graph.graph, "multigraph": False}  # node_link_data's keys, sorted
    parts = ["{"]
    for key, value in head.items():
        parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    ids: dict[str, str] = {}
    lines = []
    shared: dict[tuple, Callable[[Any], tuple] | None] = {}  # a node's keys -> what reads its shared values
    templates: dict[tuple, tuple[str, ...] | None] = {}
    for node, data in graph._node.items():
        # An id of letters, digits and _ (every id the compiler makes) is its own JSON text.
        ids[node] = encoded_id = f'"{node}"' if node.isascii() and node.isidentifier() else json.dumps(node)
        keys = tuple(data)
        if keys not in shared:
            shared[keys] = _reader(keys)
        getter = shared[keys]
        if getter is None:  # no layer, stage or devices: in full
            lines.append(_full(node, data))
            continue
        values = getter(data)
        try:
            template = templates.get((keys, values), ())
        except TypeError:  # a list (operand shapes, or a DAG read back from JSON): JSON writes a tuple alike
            values = tuple(tuple(value) if type(value) is list else value for value in values)
            try:
                template = templates.get((keys, values), ())
            except TypeError:  # lists in lists: no template
                lines.append(_full(node, data))
                continue
        if template == ():
            template = templates[(keys, values)] = _template({name: data[name] for name in keys if name not in _PER_NODE})  # type: ignore[literal-required]
        if template is None:
            lines.append(_full(node, data))
            continue
        before, after_devices, after_id, after_layer, after_stage = template
        layer, stage, devices = data["layer"], data["stage"], data["devices"]
        devices_text = f"[{devices[0]}]" if type(devices) is list and len(devices) == 1 and type(devices[0]) is int else _LINE.encode(devices)
        layer_text = str(layer) if type(layer) is int else json.dumps(layer)
        stage_text = str(stage) if type(stage) is int else json.dumps(stage)
        lines.append(f"{before}{devices_text}{after_devices}{encoded_id}{after_id}{layer_text}{after_layer}{stage_text}{after_stage}")
    parts += ['"nodes": [', ",\n".join(lines), "],"]
    lines = []
    operands_text: dict[Any, str] = {}
    for tail, targets in graph._succ.items():  # graph.edges' order
        source = ids[tail]
        for head_id, edge in targets.items():
            if len(edge) == 1 and "operands" in edge:  # the DAG's edges: keys operands, source, target in order
                operands = edge["operands"]
                text = operands_text.get(operands)
                if text is None:
                    text = operands_text[operands] = _LINE.encode(operands)
                lines.append(f'{{"operands": {text}, "source": {source}, "target": {ids[head_id]}}}')
            else:
                lines.append(_LINE.encode({**edge, "source": tail, "target": head_id}))
    parts += ['"edges": [', ",\n".join(lines), "]", "}"]
    return "\n".join(parts) + "\n"


def _reader(keys: tuple[str, ...]) -> Callable[[Any], tuple] | None:
    """What reads the values a node with these keys shares with the other nodes of its step
    (all but layer, stage and devices), as a tuple; None when it lacks one of those three."""
    if not all(name in keys for name in _PER_NODE):
        return None
    rest = [name for name in keys if name not in _PER_NODE]
    if len(rest) >= 2:
        return itemgetter(*rest)
    return lambda data: tuple(data[name] for name in rest)


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


def load_json(text: str) -> nx.DiGraph:
    """The inverse of emit_json (shapes come back as lists)."""
    import networkx as nx

    graph = nx.node_link_graph(json.loads(text), directed=True, multigraph=False, edges="edges")
    assert isinstance(graph, nx.DiGraph)
    return graph
