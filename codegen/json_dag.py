"""dag.json: the DAG as networkx node-link data, one node or edge per line, in a stable order.

The text is what `networkx.node_link_data(graph, edges="edges")` gives, each node and edge
encoded with sorted keys (tests/core/test_dag_json.py holds the two equal), written here without
networkx: at 65,000 nodes, encoding each node in full costs several times what the rest of the
file does. The nodes of one step of the layer differ only in id, layer, stage and devices, so
each distinct rest is encoded once, as the text between those four (in sorted order, as
sort_keys writes them). The rest is found by its keys and values, read in one call; a list
among them (the operand shapes of context parallelism's attention, a new list per node) is
looked up as the tuple JSON writes alike. The nodes of a step come one after another, so a node
with the last one's keys and shared values takes its text without a look-up.

Python's work per line is most of the time at 236,000 nodes, so the lines are pieces appended to
one list and joined once (no string per line, no second copy), and when every id is its own JSON
text (the compiler's always are) the edges write their ends as they are, with no look-up.
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
    out = ["{\n"]
    for key, value in head.items():
        out.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n")
    out.append('"nodes": [\n')
    start = len(out)
    plain = _nodes(graph, out)
    _end_lines(out, start)
    out.append('],\n"edges": [\n')
    start = len(out)
    _edges(graph, out, plain)
    _end_lines(out, start)
    out.append("]\n}\n")
    return "".join(out)


def _end_lines(out: list[str], start: int) -> None:
    """The lines appended from `start` on each end in ",\\n": the last in "\\n" alone, as in a list
    joined by ",\\n" and then a newline (none but the newline when there is no line)."""
    if len(out) > start:
        out[-1] = out[-1].removesuffix(",\n")
    out.append("\n")


def _nodes(graph: Dag, out: list[str]) -> bool:
    """Appends each node's line and ",\\n"; True when every id is its own JSON text (no escape)."""
    plain = True
    readers: dict[tuple, Callable[[Any], tuple] | None] = {}  # a node's keys -> what reads its shared values
    templates: dict[tuple, tuple[str, ...] | None] = {}
    # What the last node had: the nodes of one step come one after another, so most nodes have the
    # keys, shared values, layer and stage of the one before and reuse its reader and text.
    size, reader, values = -1, None, None
    last_reader, last_values, template = None, None, None
    last_template = last_layer = last_stage = tail = None
    for node, data in graph._node.items():
        if node.isascii() and node.isidentifier():  # every id the compiler makes: its own JSON text
            name = node
        else:
            name, plain = json.dumps(node)[1:-1], False
        try:
            if len(data) != size:  # same size and every key of the last node's: the same keys
                raise KeyError
            values = reader(data)  # type: ignore[misc]
            layer, stage, devices = data["layer"], data["stage"], data["devices"]
        except KeyError:
            keys = tuple(data)
            if keys not in readers:
                readers[keys] = _reader(keys)
            reader = readers[keys]
            if reader is None:  # no layer, stage or devices: in full
                size = -1
                out += (_full(node, data), ",\n")
                continue
            size = len(keys)
            values = reader(data)
            layer, stage, devices = data["layer"], data["stage"], data["devices"]
        if reader is not last_reader or values != last_values:
            template = _find(templates, reader, values, data)
            last_reader, last_values = reader, values
        if template is None:
            out += (_full(node, data), ",\n")
            continue
        before, after_devices, after_id, after_layer, after_stage = template
        if template is not last_template or layer is not last_layer or stage is not last_stage:
            # What follows the id, written once per run of nodes with one template, layer and stage.
            layer_text = str(layer) if type(layer) is int else json.dumps(layer)
            stage_text = str(stage) if type(stage) is int else json.dumps(stage)
            tail = f"{after_id}{layer_text}{after_layer}{stage_text}{after_stage}"
            last_template, last_layer, last_stage = template, layer, stage
        devices_text = f"[{devices[0]}]" if type(devices) is list and len(devices) == 1 and type(devices[0]) is int else _LINE.encode(devices)
        out += (before, devices_text, after_devices, name, tail, ",\n")  # type: ignore[arg-type]
    return plain


def _find(templates: dict, reader: object, values: tuple, data: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The template of a node's shared values (as `reader` read them), made the first time they are seen."""
    try:
        template = templates.get((reader, values), ())
    except TypeError:  # a list (operand shapes, or a DAG read back from JSON): JSON writes a tuple alike
        values = tuple(tuple(value) if type(value) is list else value for value in values)
        try:
            template = templates.get((reader, values), ())
        except TypeError:  # lists in lists: no template
            return None
    if template == ():
        template = templates[(reader, values)] = _template({name: value for name, value in data.items() if name not in _PER_NODE})
    return template


def _edges(graph: Dag, out: list[str], plain: bool) -> None:
    """Appends each edge's line and ",\\n", in graph.edges' order; `plain`: every id is its own JSON text."""
    names = None if plain else {node: json.dumps(node)[1:-1] for node in graph._node}
    starts: dict[Any, str] = {}  # operands -> the line's text up to them
    for tail, targets in graph._succ.items():
        middle = f', "source": "{tail if names is None else names[tail]}", "target": "'
        for head, edge in targets.items():
            if len(edge) == 1 and "operands" in edge:  # the DAG's edges: keys operands, source, target in order
                operands = edge["operands"]
                try:
                    start = starts.get(operands)
                    if start is None:
                        start = starts[operands] = '{"operands": ' + _LINE.encode(operands)
                except TypeError:  # a list: its own text
                    start = '{"operands": ' + _LINE.encode(operands)
                out += (start, middle, head if names is None else names[head], '"},\n')
            else:
                out += (_LINE.encode({**edge, "source": tail, "target": head}), ",\n")


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
    pieces, the id's quotes in the two around it); None when a value of `rest` holds a mark itself."""
    text = _LINE.encode({**rest, **{name: _MARK.format(name) for name in _OWN}})
    pieces = []
    for name in _OWN:
        mark = json.dumps(_MARK.format(name))
        if text.count(mark) != 1:
            return None
        before, _, text = text.partition(mark)
        pieces.append(before)
    before, after_devices, after_id, after_layer = pieces
    return before, f'{after_devices}"', f'"{after_id}', after_layer, text


def load_json(text: str) -> nx.DiGraph:
    """The inverse of emit_json (shapes come back as lists)."""
    import networkx as nx

    graph = nx.node_link_graph(json.loads(text), directed=True, multigraph=False, edges="edges")
    assert isinstance(graph, nx.DiGraph)
    return graph
