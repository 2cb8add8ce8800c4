"""The structural rules (DAG001-DAG007, DAG010). Each is a function DagView -> list[Finding]."""

from __future__ import annotations

import networkx as nx

from par.dsl.units import span
from par.lint.classify import COLLECTIVE_TITLES, NodeInfo
from par.lint.findings import Finding
from par.lint.labels import ELIDED_LAYERS, op_title
from par.lint.view import DagView, declared_and_labelled

# DAG006's message for each reason `view.find_undefined` gives.
_UNDEFINED = {
    "cluster": ("edge refers to `{node}`, a cluster: an edge always joins nodes, so Graphviz "
                "draws a new node of that name (to point at a cluster, set `compound=true` and "
                "`lhead`/`ltail`)"),
    "undeclared": ("edge refers to `{node}`, which no node statement declares (a misspelt id, or "
                   "a node the script forgot to emit)"),
    "unlabelled": ("`{node}` has no label of its own, unlike {labelled} of the {declared} nodes: "
                   "an edge created it from an id nothing else declares (a misspelt or "
                   "misnumbered id)"),
}


def check_cycles(view: DagView) -> list[Finding]:
    """DAG001: every self-loop, and one cycle through each other strongly connected component."""
    if not view.graph.directed:
        return []
    digraph: nx.DiGraph[str] = nx.DiGraph()
    digraph.add_nodes_from(view.info)
    digraph.add_edges_from(key for key in view.edge_line if key[0] != key[1])
    findings = [
        view.finding("DAG001", line, f"self-loop: `{src}` -> `{src}`", [src])
        for (src, dst), line in view.edge_line.items() if src == dst
    ]
    for component in nx.strongly_connected_components(digraph):
        if len(component) == 1 or _links_gpus(view, component):
            continue
        start = min(component, key=lambda node: (view.info[node].line, view.info[node].col))
        cycle = nx.find_cycle(digraph.subgraph(component), source=start)
        path = [cycle[0][0]] + [dst for _, dst in cycle]
        line = view.edge_line[cycle[0][0], cycle[0][1]]
        findings.append(view.finding("DAG001", line, "cycle: " + " -> ".join(path), path[:-1]))
    return findings


def _links_gpus(view: DagView, component) -> bool:
    """GPUs (nodes titled only by their device, "GPU 3") joined both ways, directly or through
    collectives: a drawing of links, not of dependencies."""
    gpus = [node for node in component
            if view.info[node].single_device is not None and not op_title(view.info[node].title)]
    return bool(gpus) and all(node in gpus or view.info[node].kind == "comm" for node in component)


def check_connections(view: DagView) -> list[Finding]:
    """DAG002-DAG005: nodes missing inputs or outputs; one finding per node, the most specific."""
    has_input = view.has_role("input")
    has_output = view.has_role("output")
    findings = []
    for node_id, info in view.info.items():
        if node_id in view.undefined or node_id in view.stray or \
                node_id in view.near_miss.values():
            continue  # DAG006 / DAG010 say what is wrong with these
        no_in, no_out = not view.preds[node_id], not view.succs[node_id]
        if not view.graph.directed:  # an undirected edge is both an input and an output
            no_in = no_out = no_in and no_out
        finding = None
        if info.kind == "comm" and (no_in or no_out):
            if not (no_out and not no_in and not has_output and _ends_branch(view, node_id)):
                finding = _comm_dangling(view, info, no_in, no_out)
        elif info.kind == "io":
            finding = _io_unconnected(view, info, no_in, no_out)
        elif no_in and no_out:
            finding = view.finding("DAG004", info.line, f"{_describe(info)} has no edges: "
                                   "nothing feeds it and nothing uses it", [node_id])
        elif no_in and has_input:
            finding = view.finding("DAG002", info.line, f"{_describe(info)} has no incoming "
                                   "edge and is not the graph's input", [node_id])
        elif no_out and has_output:
            finding = view.finding("DAG003", info.line, f"{_describe(info)} has no outgoing "
                                   "edge and is not the graph's output", [node_id])
        if finding is not None:
            findings.append(finding)
    return findings


def _ends_branch(view: DagView, node_id: str) -> bool:
    """Everything that feeds the collective feeds only it: where the graph names no output,
    it is where that branch of the drawing ends (an AllReduce as the last step shown)."""
    return all(view.succs[pred] == [node_id] for pred in view.preds[node_id])


def _comm_dangling(view: DagView, info: NodeInfo, no_in: bool, no_out: bool) -> Finding:
    missing = "no input and no output edge" if no_in and no_out else (
        "no input edge" if no_in else "no output edge")
    return view.finding("DAG005", info.line,
                        f"communication node {_describe(info)} has {missing} ({info.kind_why})",
                        [info.id])


def _io_unconnected(view: DagView, info: NodeInfo, no_in: bool, no_out: bool) -> Finding | None:
    if info.role == "input" and no_out:
        return view.finding("DAG003", info.line,
                            f"the graph's input `{info.id}` has no outgoing edge", [info.id])
    if info.role == "output" and no_in:
        return view.finding("DAG002", info.line,
                            f"the graph's output `{info.id}` has no incoming edge", [info.id])
    return None


def _describe(info: NodeInfo) -> str:
    text = f"`{info.id}`"
    if info.collective is not None and info.collective != "comm":
        text += f" ({COLLECTIVE_TITLES[info.collective]})"
    return text


def check_undefined(view: DagView) -> list[Finding]:
    """DAG006: an edge names a node no statement declares (see `view.find_undefined`)."""
    declared, labelled = declared_and_labelled(view)
    findings = []
    for node, reason in view.undefined.items():
        message = _UNDEFINED[reason].format(node=node, labelled=labelled, declared=declared)
        meant = view.near_miss.get(node)
        if meant is not None:  # one defect: the misspelt id, and the node it left unconnected
            message += (f"; did you mean `{meant}` (line {view.info[meant].line}, which has no "
                        "edges)?")
        findings.append(view.finding("DAG006", view.info[node].line, message,
                                     [node] if meant is None else [node, meant]))
    return findings


def check_stray_nodes(view: DagView) -> list[Finding]:
    """DAG010: `style=rounded filled` declares a node `filled`; Graphviz draws it."""
    return [
        view.finding("DAG010", view.info[node].line,
                     f"stray node `{node}`: a bare `{node}` statement declares a node Graphviz "
                     f"will draw; write the attribute as one value, e.g. "
                     f"`style=\"rounded,{node}\"`", [node])
        for node in view.graph.nodes if node in view.stray
    ]


def check_layer_gaps(view: DagView) -> list[Finding]:
    """DAG007: layers seen form [first, last]; every gap is one finding.

    Works on each node's run of layers, never on the layers one by one, so a label naming
    layer 10^12 costs no more than one naming layer 12."""
    runs: list[tuple[int, int]] = []
    starts: dict[int, NodeInfo] = {}  # per first layer of a run: the earliest node that starts it
    for info in view.info.values():
        layers = info.layers
        if layers.stop <= layers.start:
            continue
        runs.append((layers.start, layers.stop - 1))
        if layers.start not in starts or info.line < starts[layers.start].line:
            starts[layers.start] = info
    findings = []
    reach = None  # the last layer covered so far
    for first, last in sorted(runs):
        if reach is not None and first > reach + 1 and not _elided(view, starts[first].id):
            # A node covering the layer after the gap covers no layer before it: it starts there.
            before, after, node = reach, first, starts[first]
            noun = "layer" if after - before == 2 else "layers"
            findings.append(view.finding(
                "DAG007", node.line,
                f"layer numbering skips {noun} {span(before + 1, after - 1)}: it jumps from layer "
                f"{before} to layer {after} (`{node.id}`, layer from {node.layer_why})", [node.id]))
        reach = last if reach is None else max(reach, last)
    return findings


def _elided(view: DagView, node: str) -> bool:
    """An edge into the node says layers are left out ("... 124 layers ...")."""
    return any(ELIDED_LAYERS.search(edge.attrs.get("label", "")) for edge in view.graph.edges
               if edge.dst == node)
