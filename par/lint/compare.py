"""Compare a DOT DAG with the DAG `par` compiles from a spec (SPEC001-SPEC005).

The spec's DAG follows the README's DAG contract: collectives are nodes with `kind == "comm"`, an
`op` (a collective of the registry) and a `layer` (None for the pipeline's send/recv and for
anything outside the layers). Its ops, titles and which of them cross pipeline stages come from
the registry, so a collective the registry gains is compared without a change here.

Two ways of drawing are compared differently, per layer and kind of collective:

- a DOT file that uses the spec's node ids (one `par` wrote) is compared node by node: every
  collective of the spec connected to a node the file draws must be there, so one dropped
  AllReduce or one dropped Send of eight is found, and a drawing of one data-parallel replica
  expects that replica's collectives only;
- any other file is compared per group: a collective drawn once for its group, or once per GPU,
  is one collective; a layer range drawn once ("Layers 2-7 (Same structure)", a stage labelled
  "Layers 0-3") stands for its layers, whose collectives are not compared; and the pipeline's
  Send/Recv, however it is drawn ("Pipeline Communication", "Transfer", "P2P", an edge labelled
  "PP Communication"), is compared per pipeline boundary.

Either way, a tensor-parallel degree the file states ("(TP4)") must be the spec's (SPEC005).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from par.dsl.dag.types import Dag
from par.dsl.dag.validate import COMMUNICATION
from par.dsl.registry.collectives import COLLECTIVES as REGISTRY
from par.dsl.registry.collectives import PIPELINE
from par.dsl.units import ranges
from par.lint.classify import COLLECTIVE_TITLES, COLLECTIVES, NodeInfo, collective_named
from par.lint.findings import Finding, node_list
from par.lint.labels import (
    ELIDED_LAYERS,
    WIDEST_RANGE,
    layer_range_in_text,
    op_key,
    op_title,
    tp_degrees_in_text,
)
from par.lint.view import DagView

TRANSFER = "transfer"  # the kind every pipeline send/recv is compared as
OUTSIDE = "outside"  # the "layer" of a collective outside the layers (not between stages)
# How other tools name a pipeline transfer drawn without saying Send or Recv.
_TRANSFER_WORDS = re.compile(
    r"(?<![a-z])(?:transfer|p2p|pipeline|pp|inter[\s-]?stage|stage)(?![a-z])", re.IGNORECASE)
_COUNT_BEFORE = re.compile(r"(?:^|[,;:(]\s*)\d+\s*[×x]?\s*$")  # "14 AllReduce", not "Layer 3 AllReduce"
_OPS_AFTER = re.compile(r"\s*\(\s*\d+\s+(?:ops|operations|calls)\b", re.IGNORECASE)
# A layer drawn with fewer own nodes than this is one box standing for its steps: whether its
# collectives are there cannot be told.
_DETAIL = 2


def compare_with_spec(view: DagView, spec_dag: Dag, *, spec_name: str | None = None) -> list[Finding]:
    spec = f"spec `{spec_name}`" if spec_name else "the spec"
    spec_layers = {layer for _, data in spec_dag.nodes(data=True) if (layer := data["layer"]) is not None}
    # a file that uses the spec's ids for its layers' nodes numbers them as the spec does
    own_ids = any(node in view.info for node, data in spec_dag.nodes(data=True) if data["layer"] is not None)
    drawn = _Drawing.of(view, spec_layers, from_one_allowed=not own_ids)
    findings = []
    shown = drawn.layers
    missing = sorted(spec_layers - shown)
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        findings.append(view.finding(
            "SPEC001", view.graph.line,
            f"{_layers(missing)} of {spec} {verb} no node in this DAG (it shows "
            f"{_layers(shown)})"))
    extra = sorted(shown - spec_layers)
    if extra:
        verb = "is" if len(extra) == 1 else "are"
        findings.append(view.finding(
            "SPEC004", drawn.first_line(extra[0]),
            f"{_layers(extra)} {verb} not in {spec} (it has {_layers(spec_layers)})"))
    findings.extend(_compare_collectives(view, spec_dag, spec, drawn, spec_layers, own_ids))
    findings.extend(_compare_pipeline(view, spec_dag, spec, drawn, spec_layers, own_ids))
    if drawn.offset:
        note = " [layers as the spec numbers them; this DAG numbers its layers from 1]"
        findings = [replace(finding, message=finding.message + note) for finding in findings]
    return findings + _compare_tp(view, spec_dag, spec)


@dataclass(slots=True)
class _Drawing:
    """What the DOT file draws, in the spec's layer numbers."""

    view: DagView
    offset: int  # 1 where the file numbers its layers from 1, else 0
    detailed: dict[int, list[str]]  # layer -> its own nodes (those naming that one layer)
    represented: set[int]  # layers covered by a range (a placeholder, a stage's label)
    collectives: dict[tuple, list[str]] = field(default_factory=dict)  # (layer, kind) -> nodes
    transfers: list[str] = field(default_factory=list)  # pipeline transfer nodes

    @classmethod
    def of(cls, view: DagView, spec_layers: set[int], *, from_one_allowed: bool) -> _Drawing:
        infos = list(view.info.values()) + list(view.placeholders.values())
        # each distinct range once: a thousand nodes labelled "Layers 0-4095" cost one range
        spans = {info.layers for info in infos if info.layer is None and info.layers}
        spans.update(_elided_spans(view))
        singles = [(info.layer, info.id) for info in infos if info.layer is not None]
        ends = [layer for layer, _ in singles] + [end for span in spans for end in (span.start, span.stop - 1)]
        # numbered from 1, as people count: the file starts at layer 1 where the spec starts at 0
        offset = int(from_one_allowed and bool(ends) and bool(spec_layers) and min(ends) == 1
                     and min(spec_layers) == 0)
        detailed: dict[int, list[str]] = {}
        for layer, node in singles:
            detailed.setdefault(layer - offset, []).append(node)
        represented = {layer - offset for span in spans for layer in span}
        drawing = cls(view, offset, detailed, represented)
        for node, info in view.info.items():
            if info.kind != "comm" or _counts_collectives(info):
                continue
            if _is_transfer(info):
                drawing.transfers.append(node)
            elif info.collective in COMMUNICATION and info.layer_range is None:
                where: int | str = OUTSIDE if info.layer is None else info.layer - offset
                drawing.collectives.setdefault((where, info.collective), []).append(node)
        return drawing

    @property
    def layers(self) -> set[int]:
        return set(self.detailed) | self.represented

    def in_detail(self, layer: int) -> bool:
        """The layer's steps are drawn: several nodes of its own, or one of its collectives."""
        return len(self.detailed.get(layer, ())) >= _DETAIL or any(
            key[0] == layer for key in self.collectives)

    def layer_of(self, node: str) -> range:
        """The layers the node stands for, in the spec's numbers."""
        info = self.view.info.get(node)
        layers = info.layers if info is not None else range(0)
        return range(layers.start - self.offset, layers.stop - self.offset)

    def first_line(self, layer) -> int:
        nodes = self.detailed.get(layer, []) if isinstance(layer, int) else []
        lines = [self.view.info[node].line for node in nodes if node in self.view.info]
        return min(lines, default=self.view.graph.line)


def _elided_spans(view: DagView) -> list[range]:
    """The layers between the ends of an edge labelled as leaving layers out ("... 124 layers
    ...", from layer 1 to layer 126)."""
    spans = []
    for edge in view.graph.edges:
        if edge.src in view.info and edge.dst in view.info and \
                ELIDED_LAYERS.search(edge.attrs.get("label", "")):
            before, after = view.info[edge.src].layers, view.info[edge.dst].layers
            if before and after and 0 < after.start - before.stop <= WIDEST_RANGE:
                spans.append(range(before.stop, after.start))
    return spans


def _counts_collectives(info: NodeInfo) -> bool:
    """A summary that counts collectives ("14 AllReduce: 64 GB sent/rank", "All-Reduce (16
    ops)"), such as a box standing for folded layers, is not one."""
    pattern = dict(COLLECTIVES).get(info.collective or "")
    if pattern is None:
        return False
    for line in info.lines:
        match = pattern.search(line)
        if match is not None:
            return bool(_COUNT_BEFORE.search(line, 0, match.start()) or _OPS_AFTER.match(line, match.end()))
    return False


def _is_transfer(info: NodeInfo) -> bool:
    if info.collective in PIPELINE:
        return True
    return info.collective == "comm" and _TRANSFER_WORDS.search(" ".join((info.id, *info.lines))) is not None


def _compare_collectives(view: DagView, spec_dag: Dag, spec: str, drawn: _Drawing,
                         spec_layers: set[int], own_ids: bool) -> list[Finding]:
    expected = _spec_collectives(spec_dag)
    # Outside the layers (a vocabulary-parallel loss's AllReduces): compared where the file uses
    # the spec's ids, or where both have some; a file's collective in no layer otherwise stands
    # for the layers' ("Tensor Parallel Sync / All-Reduce"), and a file may leave the loss out.
    outside_compared = own_ids or (any(key[0] == OUTSIDE for key in expected)
                                   and any(key[0] == OUTSIDE for key in drawn.collectives))
    findings = []
    for layer, kind in sorted(set(expected) | set(drawn.collectives), key=_order):
        if layer == OUTSIDE:
            if not outside_compared:
                continue
        elif layer not in spec_layers or not drawn.in_detail(layer):
            continue  # a missing layer is SPEC001's; a layer drawn as a range or one box is not compared
        want, have = expected.get((layer, kind), []), drawn.collectives.get((layer, kind), [])
        where = "outside the layers" if layer == OUTSIDE else f"layer {layer}"
        findings.extend(_compare_group(view, spec_dag, spec, where, _title(kind), want, have,
                                       drawn.first_line(layer), own_ids))
    return findings


def _compare_group(view: DagView, spec_dag: Dag, spec: str, where: str, title: str,
                   want: list[str], have: list[str], line: int, own_ids: bool) -> list[Finding]:
    if own_ids:
        # the spec's ids: node by node, each where the file draws a node it connects to (a
        # drawing of one data-parallel replica expects only that replica's collectives)
        shown = [node for node in want if node in view.info or any(
            other in view.info for other in (*spec_dag.predecessors(node), *spec_dag.successors(node)))]
        missing = [node for node in shown if node not in view.info]
        expected, absent = len(shown), len(missing)
        listed, named = "", f"; expected {node_list(missing, limit=4)}"
        instances = _instances(view, [node for node in have if node not in spec_dag])
    else:
        groups = _groups(spec_dag, want)
        expected = absent = len(groups)
        listed, named = f": {node_list([group[0] for group in groups], limit=4)}", ""
        instances = _instances(view, have)
    gap = absent - len(instances)
    if gap > 0:
        return [view.finding(
            "SPEC002", line,
            f"{where}: {gap} {title} missing ({spec} has {expected}{listed}; this DAG "
            f"{expected - gap}){named}")]
    if gap < 0:
        extra = [node for nodes in instances[gap:] for node in nodes]
        return [view.finding(
            "SPEC003", view.info[extra[0]].line,
            f"{where}: {-gap} {title} more than {spec} has ({expected}): "
            f"{node_list(extra, limit=4)}", extra)]
    return []


def _compare_pipeline(view: DagView, spec_dag: Dag, spec: str, drawn: _Drawing,
                      spec_layers: set[int], own_ids: bool) -> list[Finding]:
    want = sorted(str(node) for node, data in spec_dag.nodes(data=True)
                  if data.get("kind") == "comm" and data.get("op") in PIPELINE)
    where, title = "between pipeline stages", _title(TRANSFER)
    if own_ids:
        return _compare_group(view, spec_dag, spec, where, title, want,
                              [node for node in drawn.transfers if node not in spec_dag],
                              view.graph.line, own_ids)
    expected = {boundary for node in want if (boundary := _spec_boundary(spec_dag, node)) is not None}
    placed: dict[int, list[str]] = {}
    unplaced = 0  # transfers with no layer on either side: each may be any boundary's
    drawn_transfers = [(_drawn_boundary(view, drawn, node), node) for node in drawn.transfers
                       if not _within_a_layer(view, drawn, node)]
    labels = {(edge.src, edge.dst): edge.attrs.get("label", "") for edge in view.graph.edges}
    for src, dst in sorted(view.comm_edges, key=view.edge_line.__getitem__):
        label = labels.get((src, dst), "")
        before, after = drawn.layer_of(src), drawn.layer_of(dst)
        inside = bool(before) and bool(after) and after.start <= before.stop - 1  # a ring's hop
        if (_TRANSFER_WORDS.search(label) or collective_named(label) in PIPELINE) and not inside:
            drawn_transfers.append((_edge_boundary(drawn, src, dst), f"{src} -> {dst}"))
    for boundary, transfer in drawn_transfers:
        if boundary is None:
            unplaced += 1
        else:
            placed.setdefault(boundary, []).append(transfer)
    # a boundary next to a layer one side lacks is SPEC001's or SPEC004's
    shown = drawn.layers
    absent = sorted(b for b in expected - set(placed) if {b, b + 1} <= shown)[unplaced:]
    findings = []
    if absent:
        findings.append(view.finding(
            "SPEC002", view.graph.line,
            f"{where}: no {title} after {_layers(absent)} ({spec} has a pipeline boundary "
            f"after {_layers(sorted(expected))})"))
    def comparable(boundary: int) -> bool:
        return boundary in spec_layers and boundary + 1 not in shown - spec_layers

    surplus = sorted(b for b in set(placed) - expected if comparable(b))
    splits = {boundary: where_split for boundary, where_split in _stage_splits(view, drawn).items()
              if boundary not in expected and boundary not in placed and comparable(boundary)}
    if splits:
        first = min(splits)
        findings.append(view.finding(
            "SPEC003", view.graph.line,
            f"{where}: the stages split after {_layers(sorted(splits))} ({splits[first]}), "
            f"where {spec} has no pipeline boundary"))
    if surplus:
        nodes = [node for boundary in surplus for node in placed[boundary] if node in view.info]
        line = min((view.info[node].line for node in nodes), default=view.graph.line)
        findings.append(view.finding(
            "SPEC003", line,
            f"{where}: a {title} after {_layers(surplus)}, where {spec} has no pipeline "
            f"boundary: {node_list([node for b in surplus for node in placed[b]], limit=4)}", nodes))
    return findings


_STAGE = re.compile(r"(?<![a-z])(?:stage|pp\s*stage|pipeline\s*stage)(?![a-z])", re.IGNORECASE)


def _stage_splits(view: DagView, drawn: _Drawing) -> dict[int, str]:
    """Where the file's pipeline stages end, as the labels of stages with a layer range say
    ("Stage 0: GPUs 0-3, Layers 0-1", a box "PP Stage 1 / Layers 1-8"), but the last: the
    last layer of each, with the label that says so."""
    ranges_said: dict[range, str] = {}
    for node, info in view.info.items():
        text = "\n".join(info.lines)
        if _STAGE.search(text) and (found := layer_range_in_text(text)) is not None:
            ranges_said.setdefault(range(found[0], found[1] + 1), f"`{node}`")
    for sub in view.graph.subgraphs:
        if _STAGE.search(sub.label) and (found := layer_range_in_text(sub.label)) is not None:
            ranges_said.setdefault(range(found[0], found[1] + 1), f"cluster `{sub.name}`")
    if len(ranges_said) < 2:
        return {}
    last = max(span.stop for span in ranges_said)
    return {span.stop - 1 - drawn.offset: said for span, said in sorted(
        ranges_said.items(), key=lambda item: (item[0].start, item[0].stop)) if span.stop < last}


def _compare_tp(view: DagView, spec_dag: Dag, spec: str) -> list[Finding]:
    """SPEC005: the file states a tensor-parallel degree ("GPU: 0-3 (TP4)", "16 EP × 4 TP"),
    and none it states is the spec's. A file that states none is not judged: a layer drawn on
    one GPU may stand for its shards."""
    tp = spec_dag.graph.get("mesh", {}).get("tp")
    stated: dict[int, tuple[int, str]] = {}  # degree -> (line, where it is stated)
    for node, info in sorted(view.info.items(), key=lambda item: item[1].line):
        for degree in {degree for line in info.lines for degree in tp_degrees_in_text(line)}:
            stated.setdefault(degree, (info.line, f"`{node}`"))
    labels = [("the graph's label", view.graph.attrs.get("label", ""))] + [
        (f"cluster `{sub.name}`" if sub.name else "a subgraph", sub.label) for sub in view.graph.subgraphs]
    for where, label in labels:
        for degree in tp_degrees_in_text(label):
            stated.setdefault(degree, (view.graph.line, where))
    if tp is None or not stated or tp in stated:
        return []
    degrees = sorted(stated)
    line, where = stated[degrees[0]]
    return [view.finding(
        "SPEC005", line,
        f"this DAG is tensor parallel {ranges(degrees)} ({where} says so), {spec} has tp {tp}")]


def _spec_boundary(spec_dag: Dag, node: str) -> int | None:
    """The last layer before the stage boundary a send or recv crosses."""
    before = [layer for pred in spec_dag.predecessors(node)
              if (layer := spec_dag.nodes[pred]["layer"]) is not None]
    if before:
        return max(before)
    after = [layer for succ in spec_dag.successors(node)
             if (layer := spec_dag.nodes[succ]["layer"]) is not None]
    return min(after) - 1 if after else None


def _drawn_boundary(view: DagView, drawn: _Drawing, node: str) -> int | None:
    """After the last layer feeding the transfer, else before the first layer it feeds."""
    before = [layers.stop - 1 for pred in view.preds[node] if (layers := drawn.layer_of(pred))]
    if before:
        return max(before)
    after = [layers.start for succ in view.succs[node] if (layers := drawn.layer_of(succ))]
    return min(after) - 1 if after else None


def _within_a_layer(view: DagView, drawn: _Drawing, node: str) -> bool:
    """A send or recv between nodes of one layer (a ring attention's "KV Ring Send") moves data
    inside the layer: it crosses no pipeline boundary. So does one drawn in a layer of its own
    whose only neighbours, on one side, are of that layer (a ring send left dangling)."""
    before = {layer for pred in view.preds[node] for layer in _ends(drawn.layer_of(pred))}
    after = {layer for succ in view.succs[node] for layer in _ends(drawn.layer_of(succ))}
    if before and after:
        return min(after) <= max(before)
    own = drawn.layer_of(node)
    return len(own) == 1 and (before or after) == {own.start}


def _ends(layers: range) -> tuple[int, ...]:
    return (layers.start, layers.stop - 1) if layers else ()


def _edge_boundary(drawn: _Drawing, src: str, dst: str) -> int | None:
    if before := drawn.layer_of(src):
        return before.stop - 1
    if after := drawn.layer_of(dst):
        return after.start - 1
    return None


def _groups(spec_dag: Dag, nodes: Iterable[str]) -> list[list[str]]:
    """The spec's collectives per group: the copies of one step (per GPU, per data-parallel
    replica) are one."""
    groups: dict[tuple, list[str]] = {}
    for node in nodes:
        data = spec_dag.nodes[node]
        groups.setdefault((data.get("name", node), data.get("stage")), []).append(node)
    return list(groups.values())


def _instances(view: DagView, nodes: list[str]) -> list[list[str]]:
    """Collective instances, in file order: copies of one collective drawn once per GPU
    (`l3_allreduce_gpu0` … `_gpu7`) or once per group on disjoint GPUs ("All-Reduce / GPU: 0-7",
    "All-Reduce / GPU: 8-15") count once."""
    groups: list[list[str]] = []
    by_key: dict[str, int] = {}  # op_key -> its group
    # title -> per group of that title, the GPUs it covers (None: not known, so none may join)
    by_title: dict[str, dict[int, set[int] | None]] = {}
    for node in nodes:
        info = view.info[node]
        title = op_title(info.title)
        devices = None if info.devices is None or info.all_devices else set(info.devices)
        index = by_key.get(op_key(node))
        if index is None and devices:
            index = next((group for group, covered in by_title.get(title, {}).items()
                          if covered is not None and not covered & devices), None)
        if index is None:
            index = len(groups)
            groups.append([])
            by_title.setdefault(title, {})[index] = set()
        groups[index].append(node)
        by_key.setdefault(op_key(node), index)
        covers = by_title.setdefault(title, {})
        if index in covers:
            known = covers[index]
            covers[index] = None if known is None or devices is None else known | devices
    return groups


def _title(kind: str) -> str:
    if kind == TRANSFER:
        return "Send/Recv"
    return COLLECTIVE_TITLES.get(kind) or REGISTRY[kind].title


def _layers(layers) -> str:
    if not layers:
        return "no layers"
    return f"layer{'s' if len(layers) > 1 else ''} {ranges(layers)}"


def _spec_collectives(spec_dag: Dag) -> dict[tuple, list[str]]:
    found: dict[tuple, list[str]] = {}
    for node, data in spec_dag.nodes(data=True):
        op = data.get("op")
        if data.get("kind") == "comm" and op in COMMUNICATION and op not in PIPELINE:
            layer = data.get("layer")
            kind = REGISTRY[op].lint_as or op  # as a drawing of it reads (a routing is an AllToAll)
            found.setdefault((OUTSIDE if layer is None else layer, kind), []).append(str(node))
    return {key: sorted(nodes) for key, nodes in found.items()}


def _order(key: tuple) -> tuple:
    layer, kind = key
    return (layer == OUTSIDE, layer if isinstance(layer, int) else 0, kind)
