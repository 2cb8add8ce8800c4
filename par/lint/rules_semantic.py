"""What a node says it does against what the drawing shows (DAG012-DAG019): collectives that
cannot do what their label says, residual adds and experts missing their inputs, pipeline
stages that skip their transfers or their GPUs, and labels a generator never filled in."""

from __future__ import annotations

import re

from par.dsl.units import ranges
from par.lint.classify import NodeInfo
from par.lint.findings import Finding, node_list
from par.lint.labels import devices_in_text
from par.lint.view import DagView, is_invisible

# "GPU 3 → GPU 3", "3->3", "from GPU 2 to GPU 2": the two ends of a point-to-point transfer.
_ENDS = re.compile(r"(?:(?:gpu|device|rank|dev)\s*_?)?(\d+)\s*(?:->|→|\bto\b)\s*"
                   r"(?:(?:gpu|device|rank|dev)\s*_?)?(\d+)(?![\d-])", re.IGNORECASE)
_REPLICATED = re.compile(r"replicated|(?<![a-z])all[\s-]+gpus|gpus?\s*:\s*all\b", re.IGNORECASE)
_RESIDUAL = re.compile(r"residual", re.IGNORECASE)
_EXPERT = re.compile(r"(?<![a-z])experts?(?![a-z])", re.IGNORECASE)
_CONTROL = re.compile(r"gate|gating|router|routing|selection", re.IGNORECASE)
_STAGE = re.compile(r"(?<![a-z])(?:pipeline\s+|pp\s*)?stage\s*(\d+)", re.IGNORECASE)
_GPU_COUNT = re.compile(r"(?<![\w.])(\d+)\s*gpus?(?![a-z])", re.IGNORECASE)
# `{7+attention_pool_gpus}`, `{num_gpus}`, `${tp}`, `{{ layer }}`: a name or an expression
# between braces that a generator meant to replace (record labels `{a|b}` are left alone).
_TEMPLATE = re.compile(r"\$?\{\{?\s*[\w.]*[a-z_][\w.]*(?:\s*[-+*/]\s*[\w.]+)*\s*\}?\}|"
                       r"\$?\{\{?\s*\d+\s*[-+*/]\s*[a-z_][\w.]*\s*\}?\}", re.IGNORECASE)


def check_semantics(view: DagView) -> list[Finding]:
    return [finding for check in (check_allreduce_widens, check_allreduce_replicated,
                                  check_transfer_to_self, check_residual_inputs,
                                  check_experts_fed, check_stage_transfers, check_stage_gpus,
                                  check_templates)
            for finding in check(view)]


def check_allreduce_widens(view: DagView) -> list[Finding]:
    """DAG012: an AllReduce sums tensors of one shape, so its output is as wide as its input;
    a wider output concatenates: an AllGather drawn as an AllReduce."""
    findings = []
    for node, info in view.info.items():
        if info.collective != "allreduce" or not info.dims:
            continue
        inputs = [shape.numel for shape in info.dims.inputs if shape.numel is not None]
        outputs = [shape.numel for shape in info.dims.outputs if shape.numel is not None]
        complete = len(inputs) == len(info.dims.inputs) and len(outputs) == len(info.dims.outputs)
        if complete and inputs and outputs and min(outputs) > max(inputs):
            findings.append(view.finding(
                "DAG012", info.line,
                f"`{node}` is drawn as an AllReduce but its output "
                f"{info.dims.outputs[0].text} is wider than its input {info.dims.inputs[0].text}: "
                "an AllReduce keeps the shape; one that concatenates is an AllGather", [node]))
    return findings


def check_allreduce_replicated(view: DagView) -> list[Finding]:
    """DAG013: an AllReduce whose every producer already holds the whole tensor on every GPU
    (another AllReduce's or an AllGather's result, or a node labelled replicated): summing
    replicas multiplies the value by the group size."""
    findings = []
    for node, info in view.info.items():
        producers = view.preds[node]
        if info.collective != "allreduce" or not producers:
            continue
        if all(_replicated(view.info[pred]) for pred in producers):
            findings.append(view.finding(
                "DAG013", info.line,
                f"`{node}` reduces {node_list(producers, limit=3)}, which every GPU already holds "
                "whole: an AllReduce of a replicated tensor adds the replicas up", [node]))
    return findings


def _replicated(info: NodeInfo) -> bool:
    if info.collective in ("allreduce", "allgather"):
        return True
    return info.kind != "comm" and any(_REPLICATED.search(line) for line in info.lines)


def check_transfer_to_self(view: DagView) -> list[Finding]:
    """DAG014: a Send/Recv (or transfer) whose label names the same GPU at both ends."""
    findings = []
    for node, info in view.info.items():
        if info.collective not in ("send", "recv", "comm"):
            continue
        for line in info.lines:
            ends = _ENDS.search(line)
            if ends and ends.group(1) == ends.group(2):
                findings.append(view.finding(
                    "DAG014", info.line,
                    f"`{node}` sends from GPU {ends.group(1)} to GPU {ends.group(2)} ({line!r}): "
                    "a transfer needs two different GPUs", [node]))
                break
    return findings


def check_residual_inputs(view: DagView) -> list[Finding]:
    """DAG015: a residual add with one input: the skip connection (or the branch) is missing."""
    return [view.finding(
        "DAG015", info.line,
        f"`{node}` is a residual add with one input (`{view.preds[node][0]}`): the skip "
        "connection or the branch it adds to is not drawn", [node])
        for node, info in view.info.items()
        if info.kind == "compute" and _RESIDUAL.search(info.title) and len(view.preds[node]) == 1
        and node not in view.undefined]


def check_experts_fed(view: DagView) -> list[Finding]:
    """DAG016: experts whose only inputs are the router's (gate's) control edges, drawn dashed
    or dotted: they are told which tokens to take but never receive the tokens. One finding
    for all such experts."""
    control = {(edge.src, edge.dst) for edge in view.graph.edges
               if re.search(r"dashed|dotted", edge.attrs.get("style", ""))}
    starved = [node for node, info in view.info.items()
               if info.kind == "compute" and _EXPERT.search(info.title)
               and not _CONTROL.search(info.title) and view.preds[node]
               and node not in view.undefined
               and all((pred, node) in control and _is_control(view, pred)
                       for pred in view.preds[node])]
    if not starved:
        return []
    first = view.info[starved[0]]
    return [view.finding(
        "DAG016", first.line,
        f"experts {node_list(starved, limit=4)} receive only the router's edges "
        f"({node_list(dict.fromkeys(p for n in starved for p in view.preds[n]), limit=3)}): "
        "the tokens they compute on never reach them", starved)]


def _is_control(view: DagView, node: str) -> bool:
    info = view.info[node]
    return info.kind != "comm" and bool(_CONTROL.search(info.title))


def check_stage_transfers(view: DagView) -> list[Finding]:
    """DAG017: an edge from one pipeline stage to the next, between disjoint GPUs, with no
    Send/Recv (node or edge label) to carry the activations across. One finding per pair of
    stages."""
    findings = []
    seen: set[tuple[int, int]] = set()
    for (src, dst), line in sorted(view.edge_line.items(), key=lambda item: item[1]):
        a, b = view.info[src], view.info[dst]
        if (src, dst) in view.comm_edges or "comm" in (a.kind, b.kind) or "io" in (a.kind, b.kind):
            continue
        first, second = _stage(view, src), _stage(view, dst)
        if first is None or second is None:
            continue
        stages = (first, second)
        if first == second or stages in seen:
            continue
        if a.devices is None or b.devices is None or a.all_devices or b.all_devices or \
                a.devices & b.devices:
            continue
        seen.add(stages)
        findings.append(view.finding(
            "DAG017", line,
            f"`{src}` (stage {stages[0]}, GPUs {ranges(a.devices)}) feeds `{dst}` (stage "
            f"{stages[1]}, GPUs {ranges(b.devices)}) with no Send/Recv between the stages",
            [src, dst]))
    return findings


def _stage(view: DagView, node: str) -> int | None:
    texts = list(view.info[node].lines) + [sub.label for sub in
                                           reversed(view.graph.scope_of(view.graph.nodes[node]))]
    for text in texts:
        match = _STAGE.search(text)
        if match:
            return int(match.group(1))
    return None


def check_stage_gpus(view: DagView) -> list[Finding]:
    """DAG018: a pipeline stage (a cluster labelled "Stage k") that says it has N GPUs while
    the nodes inside, each naming its own GPUs, use fewer."""
    findings = []
    for index, sub in enumerate(view.graph.subgraphs):
        if not sub.label or not _STAGE.search(sub.label):
            continue
        said = _said_gpus(sub.label)
        members = [node for node, info in view.info.items()
                   if index in view.graph.nodes[node].scope
                   and not is_invisible(view.graph.nodes[node].attrs)]
        own = [view.info[node].devices for node in members
               if not view.info[node].devices_why.startswith("cluster")]
        if said is None or not members or len(own) < len(members) or \
                any(devices is None or devices == frozenset({-1}) for devices in own):
            continue
        used = frozenset[int]().union(*(devices for devices in own if devices is not None))
        if len(used) < said:
            findings.append(view.finding(
                "DAG018", view.info[members[0]].line,
                f"stage {sub.label.splitlines()[0]!r} says {said} GPUs but its nodes use "
                f"{len(used)} (GPUs {ranges(used)})", members[:1]))
    return findings


def _said_gpus(label: str) -> int | None:
    count = _GPU_COUNT.search(label)
    if count:
        return int(count.group(1))
    devices = devices_in_text(label)
    return len(devices) if devices and devices != frozenset({-1}) else None


def check_templates(view: DagView) -> list[Finding]:
    """DAG019: a label still holds a template placeholder (`{7+attention_pool_gpus}`)."""
    findings = []
    for node, info in view.info.items():
        if view.graph.nodes[node].attrs.get("shape", "").lower() in ("record", "mrecord"):
            continue
        for line in info.lines:
            match = _TEMPLATE.search(line)
            if match and "|" not in match.group(0):
                findings.append(view.finding(
                    "DAG019", info.line,
                    f"`{node}`'s label holds the unfilled template `{match.group(0)}`: the "
                    "script that wrote the file never substituted it", [node]))
                break
    return findings
