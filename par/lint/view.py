"""A DOT graph ready for the rules: classified nodes plus adjacency in file order."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from par.lint.classify import NodeInfo, classify_graph, collective_named, names_computation
from par.lint.dot_reader import DotEdge, DotGraph, DotNode
from par.lint.findings import Finding
from par.lint.labels import edit_distance, id_family, label_lines, op_key, op_title

# Values of Graphviz's `style` attribute: a node with one of these names, declared bare,
# is an attribute list gone wrong (`style=rounded filled` declares a node `filled`).
ANNOTATION_SHAPES = frozenset({"note", "plaintext", "plain", "none"})
STYLE_WORDS = frozenset({"filled", "rounded", "dashed", "dotted", "bold", "solid", "invis",
                         "diagonals", "striped", "wedged", "radial", "tapered"})
# A routed expert's title: "Expert 3", "Experts 0-3"; a shared expert is no routed one.
_EXPERT = re.compile(r"(?<![a-z])experts?(?![a-z])", re.IGNORECASE)
_SHARED = re.compile(r"(?<![a-z])shared(?![a-z])", re.IGNORECASE)


@dataclass(slots=True)
class DagView:
    """A DOT graph read as a DAG: each node's classification, its edges both ways and what is odd about it."""

    graph: DotGraph
    info: dict[str, NodeInfo]
    preds: dict[str, list[str]] = field(default_factory=dict)
    succs: dict[str, list[str]] = field(default_factory=dict)
    edge_line: dict[tuple[str, str], int] = field(default_factory=dict)
    comm_edges: set[tuple[str, str]] = field(default_factory=set)
    stray: set[str] = field(default_factory=set)
    undefined: dict[str, str] = field(default_factory=dict)  # node -> "cluster" | "undeclared" | "unlabelled"
    shards: frozenset[str] = frozenset()  # see `sharded_nodes`
    experts: dict[str, frozenset[int]] = field(default_factory=dict)  # see `routed_experts`
    near_miss: dict[str, str] = field(default_factory=dict)  # see `near_misses`
    # Edge-less nodes left out because their label says they stand for others ("Layers 1-3
    # (Same structure)"): no part of the dataflow, but they say which layers the file draws.
    placeholders: dict[str, NodeInfo] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.graph.file

    def has_role(self, role: str) -> bool:
        return any(info.role == role for info in self.info.values())

    def finding(self, code: str, line: int, message: str, nodes=()) -> Finding:
        """A finding of this graph."""
        return Finding(code, self.file, line, message, tuple(nodes), graph=self.graph.name)


def build_view(graph: DotGraph) -> DagView:
    """The DAG as drawn: invisible edges (`style=invis`) are layout aids and left out; so are
    invisible nodes, notes and legend entries that no drawn edge touches."""
    edges = [edge for edge in graph.edges if not is_invisible(edge.attrs)]
    touched = {node for edge in edges for node in (edge.src, edge.dst)}
    info = classify_graph(graph)
    tables = _tables(graph, touched)
    view = DagView(graph, {node_id: info[node_id] for node_id, node in graph.nodes.items()
                           if node_id in touched or not (
                               _is_decoration(graph, node) or _is_note(info[node_id], node)
                               or node.scope and node.scope[-1] in tables)})
    for node_id in view.info:
        view.preds[node_id] = []
        view.succs[node_id] = []
    view.placeholders = {node_id: node_info for node_id, node_info in info.items()
                         if node_id not in view.info and _stands_for_others(node_info)}
    members = _cluster_members(graph)
    for edge in edges:
        is_comm = _names_collective(edge, graph.name)
        for src in members.get(edge.attrs.get("ltail", ""), [edge.src]):
            for dst in members.get(edge.attrs.get("lhead", ""), [edge.dst]):
                if src in view.info and dst in view.info:
                    _add_edge(view, src, dst, edge.line, is_comm)
    _name_loose_ends(view)
    view.stray = {node_id for node_id in view.info if _is_stray(view, graph.nodes[node_id])}
    view.undefined = find_undefined(view)
    view.shards = sharded_nodes(view)
    view.experts = routed_experts(view)
    view.near_miss = near_misses(view)
    return view


def routed_experts(view: DagView) -> dict[str, frozenset[int]]:
    """Computations titled as an expert ("Expert 3", "Experts 0-3 FFN"; not a shared expert,
    which every GPU runs on its own tokens) on known GPUs, with their GPUs: DAG020 looks where
    their outputs meet, and DAG008 leaves them to it."""
    found = {}
    for node_id, info in view.info.items():
        title = op_title(info.title)
        if (info.kind == "compute" and _EXPERT.search(title) and not _SHARED.search(title)
                and info.devices is not None and not info.all_devices
                and node_id not in view.undefined and node_id not in view.stray):
            found[node_id] = info.devices
    return found


def near_misses(view: DagView) -> dict[str, str]:
    """Undefined edge endpoints -> the declared node with no edges they were meant to be
    (`l0_expert-8_gpu8` for `l0_expert0_gpu8`): at most 2 edits apart, and fewer than a third
    of the id. Each isolated node is claimed once, by the endpoints in file order."""
    isolated = [node for node in view.info
                if view.graph.nodes[node].declared and node not in view.undefined
                and node not in view.stray and not view.preds[node] and not view.succs[node]]
    found: dict[str, str] = {}
    for node in sorted(view.undefined, key=lambda name: view.info[name].line):
        if view.undefined[node] == "cluster":
            continue
        scored = [(edit_distance(node, other), index, other) for index, other in enumerate(isolated)
                  if other not in found.values() and abs(len(other) - len(node)) <= 2]
        if scored:
            distance, _, best = min(scored)
            if distance <= 2 and 3 * distance < len(node):
                found[node] = best
    return found


def find_undefined(view: DagView) -> dict[str, str]:
    """Nodes that only exist because an edge named them (only where the file declares nodes),
    each with the reason: "cluster", "undeclared" or "unlabelled".

    The graph's own input and output may stay implicit. A file Graphviz has already laid out
    (`dot -Tdot`: nodes carry `pos`) declares every node, the accidental ones too; there an
    unlabelled node among labelled ones is the same defect ("unlabelled"). So is a node named
    like a cluster (an edge cannot end at a cluster).
    """
    declared, labelled = declared_and_labelled(view)
    if not declared:
        return {}
    clusters = {sub.name for sub in view.graph.subgraphs if sub.name}
    found = {}
    for node in (view.graph.nodes[node_id] for node_id in view.info):
        if node.id in clusters:
            found[node.id] = "cluster"
        elif not node.declared and view.info[node.id].role is None:
            found[node.id] = "undeclared"
        elif ("pos" in node.attrs and not _own_label(node.attrs.get("label"))
              and labelled >= 0.75 * declared
              and (view.preds[node.id] or view.succs[node.id])):
            found[node.id] = "unlabelled"
    return found


def declared_and_labelled(view: DagView) -> tuple[int, int]:
    """How many nodes a statement declares, and how many of those have a label of their own."""
    declared = [view.graph.nodes[node_id] for node_id in view.info
                if view.graph.nodes[node_id].declared]
    return len(declared), sum(_own_label(node.attrs.get("label")) for node in declared)


def sharded_nodes(view: DagView) -> frozenset[str]:
    """Computations that are one op of one layer repeated on several single GPUs: the same id
    but for the device (`fc1_gpu0`, `fc1_gpu1`), the same title ("Q Projection GPU0"), or
    experts that differ only in their number ("Expert 0" on GPU 0, "Expert 1" on GPU 1: the
    experts of one MoE layer are its shards). A node titled only by its device ("GPU 3")
    stands for the GPU itself, not an op."""
    groups: dict[tuple, list[str]] = {}
    for node_id, info in view.info.items():
        title = op_title(info.title)
        if (info.single_device is None or info.kind != "compute" or not title
                or node_id in view.undefined or node_id in view.stray):
            continue
        groups.setdefault((info.layer, "id", op_key(node_id)), []).append(node_id)
        groups.setdefault((info.layer, "title", title), []).append(node_id)
        if "expert" in title:
            groups.setdefault((info.layer, "expert", re.sub(r"\d+", "#", title)), []).append(node_id)
    return frozenset(node for members in groups.values()
                     if len({view.info[node].single_device for node in members}) >= 2
                     for node in members)


def _own_label(label: str | None) -> bool:
    return label is not None and label not in ("", "\\N")


def _is_stray(view: DagView, node: DotNode) -> bool:
    return (node.bare and node.id.lower() in STYLE_WORDS and not view.preds[node.id]
            and not view.succs[node.id])


def _name_loose_ends(view: DagView) -> None:
    """A source titled "Input ..." is the graph's input, a sink titled "Output ..." its output;
    but not a node with no edges at all, nor one whose title names a computation ("Output
    Projection")."""
    for node_id, info in view.info.items():
        words = info.title.lower().split()
        first = words[0].strip(":") if words else ""
        if info.role is not None or first not in ("input", "output") or \
                names_computation(info.title) or not (view.preds[node_id] or view.succs[node_id]):
            continue
        loose = not view.preds[node_id] if first == "input" else not view.succs[node_id]
        if loose:
            end = "source" if first == "input" else "sink"
            why = f"the graph's {first} (a {end} titled {info.title!r})"
            view.info[node_id] = replace(info, role=first, kind="io", kind_why=why)


def is_invisible(attrs: dict[str, str]) -> bool:
    return "invis" in attrs.get("style", "").lower()


# An edge-less node whose label says it stands for others, or that heads the drawing.
_PLACEHOLDER = re.compile(r"same (?:structure|operations|pattern)|similar|repeated|^\.\.\.|…",
                          re.IGNORECASE | re.MULTILINE)
_NOTE_ID = re.compile(r"^(?:title|legend|note|notes|summary|caption)(?:_\w*)?$", re.IGNORECASE)


def _is_note(info: NodeInfo, node: DotNode) -> bool:
    """An edge-less node that is no part of the dataflow: a heading or legend, a placeholder
    ("... GPU 1-15 (Same structure as GPU 0)"), or an information ellipse that names no
    collective ("DP=8", "16 Ring Stages", "Ring Communication Pattern"). A bare style word
    (`filled`) is DAG010's."""
    if node.bare and node.id.lower() in STYLE_WORDS:
        return False
    return bool(_NOTE_ID.match(info.id) or _stands_for_others(info)
                or (info.kind == "comm" and info.collective == "comm"))


def _stands_for_others(info: NodeInfo) -> bool:
    return _PLACEHOLDER.search("\n".join(info.lines)) is not None


def _tables(graph: DotGraph, touched: set[str]) -> set[int]:
    """Clusters that are tables, not dataflow: no node in them has an edge, nor does any node
    elsewhere named like one of theirs (`gpu8_available`); a cluster of GPUs that lacks the
    edges its sibling cluster's GPUs have (`gpu_16` beside a wired `gpu_0`) is not a table."""
    families_touched = {id_family(node) for node in touched}
    members: dict[int, list[str]] = {}
    for node in graph.nodes.values():
        if node.scope:
            members.setdefault(node.scope[-1], []).append(node.id)
    return {index for index, nodes in members.items()
            if (graph.subgraphs[index].name or "").startswith("cluster")
            and not any(node in touched or id_family(node) in families_touched for node in nodes)}


def _is_decoration(graph: DotGraph, node: DotNode) -> bool:
    """Not part of the dataflow: invisible, a note or plain text, or an entry of a legend."""
    if is_invisible(node.attrs) or node.attrs.get("shape", "").lower() in ANNOTATION_SHAPES:
        return True
    return any("legend" in f"{sub.name or ''} {sub.label}".lower() for sub in graph.scope_of(node))


def _add_edge(view: DagView, src: str, dst: str, line: int, is_comm: bool) -> None:
    key = (src, dst)
    if key in view.edge_line:
        return
    view.edge_line[key] = line
    view.succs[src].append(dst)
    view.preds[dst].append(src)
    if is_comm:
        view.comm_edges.add(key)


def _names_collective(edge: DotEdge, graph_name: str) -> bool:
    text = " ".join(label_lines(edge.attrs.get("label", ""), node_id="", graph_name=graph_name,
                                html_label=False))
    return bool(text) and collective_named(text) is not None


def _cluster_members(graph: DotGraph) -> dict[str, list[str]]:
    """Cluster name -> its nodes, for compound edges (`lhead`/`ltail` name a cluster)."""
    members: dict[str, list[str]] = {}
    for node in graph.nodes.values():
        for index in node.scope:
            name = graph.subgraphs[index].name
            if name:
                members.setdefault(name, []).append(node.id)
    return members
