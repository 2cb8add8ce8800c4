"""Classify the nodes of a DOT DAG: kind, collective, role, devices, layer, dims.

Every decision records *why* it was made (`kind_why`, `devices_why`, `layer_why`), so a report
can say "communication: label names AllGather" or "device 3: cluster 'GPU 3'".

Kinds: `io` (the graph's input/output), `comm` (communication), `route` (split, concat,
gate, aggregation) and `compute` (the rest), decided by the label first and the shape second:
a name of the graph's input/output; a collective's name in the id or label; a routing name in
the title ("Expert Aggregation" routes, whatever shape it is drawn with); a computation's name in
the title (an ellipse labelled "Residual Add" computes); the ellipse shape; a routing name in the
id; the parallelogram shape. A parallelogram labelled "All-Reduce" is communication.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from par.dsl.registry.collectives import COLLECTIVES as REGISTRY
from par.lint.dot_reader import DotGraph, DotNode
from par.lint.labels import (
    ALL_DEVICES,
    Dims,
    device_in_id,
    devices_in_text,
    dims_in_lines,
    label_lines,
    layer_in_id,
    layer_in_text,
    layer_range_in_id,
    layer_range_in_text,
)

# Collective names, most specific first; matched against the id and the label. The ones par
# knows are declared in its registry; lint also knows a broadcast, and communication of no
# named kind (last: any collective's name is more specific).
_NAMED = tuple(
    (spec.name, spec.lint_pattern, spec.lint_title) for spec in REGISTRY.values() if spec.lint_pattern is not None
) + (
    ("broadcast", r"broadcast", "Broadcast"),
    ("comm", r"(?<![a-z])(?:comm|communication|transfer|p2p)(?![a-z])", "communication"),
)
COLLECTIVES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE)) for name, pattern, _ in _NAMED
)
COLLECTIVE_TITLES = {name: title for name, _, title in _NAMED}

_ROUTE = re.compile(
    r"split|concat|(?<![a-z])(?<!mlp\s)(?<!ffn\s)gat(?:e|ing)(?!\s*_?proj)|rout(?:e|er|ing)|dispatch|combine|"
    r"aggregat|gather|scatter|merge", re.IGNORECASE)
_COMPUTE = re.compile(
    r"(?<![a-z])add(?![a-z])|norm|attention|attn|proj|linear|embed|expert|mlp|ffn|gelu|silu|"
    r"softmax|matmul|residual|cache|activation|mul(?![a-z])|multiply", re.IGNORECASE)
_IO_ID = re.compile(
    r"^(?:(?:model|system|final|global|graph|mlp|dag|layer\d*)_)?(input|output|source|sink)"
    r"(?:_(?:tensor|node|data|tokens|batch|layer))?$", re.IGNORECASE)
_IO_TITLE = re.compile(
    r"^(?:(?:model|system|final|global|mlp|transformer|layer)(?:\s+layer)?(?:\s+\d+)?\s+)?"
    r"(input|output)(?:\s+(?:batch|tensor|tokens|layer|embedding|logits|data|node))?$",
    re.IGNORECASE)
_DIMS_LINE = re.compile(r"^\s*(?:input|output|in|out)\s*\d*\s*:", re.IGNORECASE)
_DEVICE_LINE = re.compile(r"^\s*(?:gpus?|devices?)\s*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What lint makes of one node of a DOT file (its kind, collective, role and devices), and why."""

    id: str
    kind: str  # io | comm | route | compute
    kind_why: str
    collective: str | None  # a key of COLLECTIVE_TITLES, for comm nodes
    role: str | None  # input | output
    devices: frozenset[int] | None
    devices_why: str
    layer: int | None
    layer_range: tuple[int, int] | None
    layer_why: str
    dims: Dims | None
    title: str
    lines: tuple[str, ...]  # the label as the reader sees it (see `labels.label_lines`)
    line: int
    col: int

    @property
    def all_devices(self) -> bool:
        """The label says "all" GPUs (how many is not known)."""
        return self.devices == ALL_DEVICES

    @property
    def single_device(self) -> int | None:
        if self.devices is None or len(self.devices) != 1 or self.all_devices:
            return None
        (device,) = self.devices
        return device

    @property
    def layers(self) -> range:
        """The layers the node stands for: its layer, the layers of its range, or none."""
        if self.layer is not None:
            return range(self.layer, self.layer + 1)
        if self.layer_range is not None:
            return range(self.layer_range[0], self.layer_range[1] + 1)
        return range(0)


def collective_named(text: str) -> str | None:
    for name, pattern in COLLECTIVES:
        if pattern.search(text):
            return name
    return None


def names_computation(title: str) -> bool:
    return _COMPUTE.search(title) is not None


def classify_graph(graph: DotGraph) -> dict[str, NodeInfo]:
    return {node_id: classify_node(graph, node) for node_id, node in graph.nodes.items()}


def classify_node(graph: DotGraph, node: DotNode) -> NodeInfo:
    raw = node.attrs.get("label", "\\N")
    lines = label_lines(raw, node_id=node.id, graph_name=graph.name, html_label=node.html_label)
    title = lines[0] if lines else node.id
    role = _role(node.id, title)
    kind, why, collective = _kind(node, lines, title, role)
    scopes = list(reversed(graph.scope_of(node)))  # innermost first
    clusters = [label_lines(sub.label, node_id=node.id, graph_name=graph.name, html_label=False)
                for sub in scopes]
    devices, devices_why = _devices(node.id, lines, clusters, [sub.name or "" for sub in scopes])
    layer, layer_range, layer_why = _layer(node.id, lines, clusters)
    xlabel = label_lines(node.attrs.get("xlabel", ""), node_id=node.id, graph_name=graph.name,
                         html_label=False)
    return NodeInfo(node.id, kind, why, collective, role, devices, devices_why, layer, layer_range,
                    layer_why, dims_in_lines(lines + xlabel), title, tuple(lines), node.line,
                    node.col)


def _role(node_id: str, title: str) -> str | None:
    match = _IO_ID.match(node_id) or _IO_TITLE.match(re.sub(r"[^\w\s]", " ", title).strip())
    if match is None:
        return None
    return "input" if match.group(1).lower() in ("input", "source") else "output"


def _kind(node: DotNode, lines: list[str], title: str, role: str | None):
    if role is not None:
        return "io", f"the graph's {role} (named {node.id!r})", None
    text = " ".join([node.id] + [line for line in lines if not _DIMS_LINE.match(line)])
    collective = collective_named(text)
    if collective is not None:
        return "comm", f"id/label names {COLLECTIVE_TITLES[collective]}", collective
    shape = node.attrs.get("shape", "").lower()
    route = _ROUTE.search(title)
    if route is not None:
        return "route", f"label names routing/aggregation ({route.group(0).lower()})", None
    compute = _COMPUTE.search(title)
    if compute is not None:
        return "compute", f"label names a computation ({compute.group(0).lower()})", None
    if shape in ("ellipse", "oval"):
        return "comm", f"shape {shape}", "comm"
    route = _ROUTE.search(node.id)
    if route is not None:
        return "route", f"id names routing/aggregation ({route.group(0).lower()})", None
    if shape == "parallelogram":
        return "route", "shape parallelogram", None
    return "compute", f"shape {shape or 'default'}, no communication or routing name", None


def _devices(node_id: str, lines: list[str], clusters: list[list[str]],
             cluster_names: list[str]):
    for line in lines:
        if _DEVICE_LINE.match(line):
            devices = devices_in_text(line)
            if devices is not None:
                return devices, f"label line {line!r}"
    for line in lines:
        devices = devices_in_text(line)
        if devices is not None:
            return devices, f"label line {line!r}"
    device = device_in_id(node_id)
    if device is not None:
        return frozenset({device}), f"id {node_id!r}"
    for label, name in zip(clusters, cluster_names, strict=True):
        for line in label:
            devices = devices_in_text(line)
            if devices is not None:
                return devices, f"cluster label line {line!r}"
        if device_in_id(name) is not None:
            return frozenset({device_in_id(name)}), f"cluster {name!r}"
    return None, "no GPU named"


def _layer(node_id: str, lines: list[str], clusters: list[list[str]]):
    """The node's own label and id before the labels of the clusters around it, innermost
    first. A range in the label ("Layers 1-6 (Same structure)") beats the id: a placeholder
    named `layer1_out` stands for all of its layers; otherwise a single layer (`layer_3_...`,
    "Layer 3") before a range."""
    attempts = [(layer_range_in_text, lines, "label line"), (layer_in_id, [node_id], "id"),
                (layer_in_text, lines, "label line"), (layer_range_in_id, [node_id], "id")]
    for label in clusters:
        attempts += [(layer_in_text, label, "cluster label line"),
                     (layer_range_in_text, label, "cluster label line")]
    for finder, texts, source in attempts:
        for text in texts:
            found = finder(text)
            if isinstance(found, int):
                return found, None, f"{source} {text!r}"
            if found is not None:
                return None, found, f"{source} {text!r}"
    return None, None, "no layer named"
