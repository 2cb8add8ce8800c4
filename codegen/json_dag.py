"""dag.json: the DAG as networkx node-link data, one node or edge per line, in a stable order.

The text is what `networkx.node_link_data(graph, edges="edges")` gives, each node and edge
encoded with sorted keys (tests/core/test_dag_json.py holds the two equal), written here without
networkx: at 65,000 nodes, encoding each node in full costs several times what the rest of the
file does. The nodes of one step of the layer differ only in id, layer, stage and devices, so
each distinct rest is encoded once, as the text between those four (in sorted order, as
sort_keys writes them); a node's rest is read in one call (an itemgetter per set of keys), not
copied out of its attributes.
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
_SPLICED = frozenset({"devices", "layer", "stage"})  # _OWN but the id: the node's values spliced in
_MARK = "\x00{}\x00"  # stands for one of _OWN in a template: JSON writes it \u0000...\u0000


def emit_json(graph: Dag) -> str:
    head = {"directed": True, "graph": graph.graph, "multigraph": False}  # node_link_data's keys, sorted
    parts = ["{"]
    for key, value in head.items():
        parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    ids: dict[str, str] = {}
    lines = []
    templates: dict[tuple, tuple[str, ...] | None] = {}
    readers: dict[tuple[str, ...], Callable[[Mapping[str, Any]], tuple] | None] = {}
    for node, data in graph.nodes(data=True):
        ids[node] = encoded_id = f'"{node}"' if node.isidentifier() and node.isascii() else json.dumps(node)  # nothing to escape
        lines.append(_node_line(node, encoded_id, data, templates, readers))
    parts += ['"nodes": [', ",\n".join(lines), "],"]
    lines = []
    operands_text: dict[Any, str] = {}
    for tail, heads in graph.succ.items():  # graph.edges' order
        tail_id = ids[tail]
        for head_id, edge in heads.items():
            if len(edge) == 1 and "operands" in edge:  # the DAG's edges: keys operands, source, target in order
                operands = edge["operands"]
                text = operands_text.get(operands)
                if text is None:
                    text = operands_text[operands] = _LINE.encode(operands)
                lines.append(f'{{"operands": {text}, "source": {tail_id}, "target": {ids[head_id]}}}')
            else:
                lines.append(_LINE.encode({**edge, "source": tail, "target": head_id}))
    parts += ['"edges": [', ",\n".join(lines), "]", "}"]
    return "\n".join(parts) + "\n"


def _node_line(
    node: str,
    encoded_id: str,
    data: Mapping[str, Any],
    templates: dict[tuple, tuple[str, ...] | None],
    readers: dict[tuple[str, ...], Callable[[Mapping[str, Any]], tuple] | None],
) -> str:
    """`data` with its id, encoded as one line: through the template of its shared attributes
    when it has all of _OWN, else in full. `readers` holds, per node's keys, what reads its
    shared values in one call (None: a node without layer, stage or devices)."""
    keys = tuple(data)
    if keys not in readers:
        readers[keys] = _reader(keys)
    reader = readers[keys]
    if reader is None:
        return _full(node, data)
    key = (keys, reader(data))
    try:
        template = templates.get(key, ())
    except TypeError:  # an unhashable value (a list read back from JSON): no template
        return _full(node, data)
    if template == ():
        template = templates[key] = _template({name: data[name] for name in keys if name not in _SPLICED})
    if template is None:
        return _full(node, data)
    layer, stage, devices = data["layer"], data["stage"], data["devices"]
    before, after_devices, after_id, after_layer, after_stage = template
    # The common values written here as JSON writes them: one GPU, an int or no layer, an int stage.
    if type(devices) is list and len(devices) == 1 and type(devices[0]) is int:
        devices_text = f"[{devices[0]}]"
    else:
        devices_text = _LINE.encode(devices)
    layer_text = str(layer) if type(layer) is int else "null" if layer is None else json.dumps(layer)
    stage_text = str(stage) if type(stage) is int else json.dumps(stage)
    return f"{before}{devices_text}{after_devices}{encoded_id}{after_id}{layer_text}{after_layer}{stage_text}{after_stage}"


def _reader(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple] | None:
    """What reads the values of a node with `keys` but for layer, stage and devices, as a tuple."""
    if not _SPLICED <= set(keys):
        return None
    shared = tuple(name for name in keys if name not in _SPLICED)
    if len(shared) > 1:
        return itemgetter(*shared)
    return lambda data: tuple(data[name] for name in shared)


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
