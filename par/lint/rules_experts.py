"""Expert parallelism: experts on different GPUs whose outputs meet with no collective (DAG020).

Each GPU of an expert-parallel group computes only the tokens routed to its own experts, so the
experts' outputs must be sent back to the GPUs their tokens came from (an All-to-All combine, or
a gather) before anything adds them up. Drawings that merge them with a plain "Expert
Aggregation" node, whatever its shape, leave that out.
"""

from __future__ import annotations

from par.dsl.units import ranges
from par.lint.findings import Finding, node_list
from par.lint.rules_parallel import TP_COLLECTIVES
from par.lint.view import DagView


def check_expert_merges(view: DagView) -> list[Finding]:
    """DAG020: the first nodes where outputs of experts on different GPUs meet with no collective.

    From each expert the walk goes forward along edges that name no communication, through
    nodes on the expert's own GPUs (its weighting, its own tensor-parallel AllReduce), and stops
    at any other collective (the combine) or at the first node off those GPUs. A node that the
    walks from experts on two or more different sets of GPUs reach is such a merge: a
    computation, or an aggregation or routing node, whatever its shape. The graph's output is
    not one: data-parallel replicas meet there too, each with its own tokens.
    """
    reached: dict[str, dict[frozenset[int], list[str]]] = {}
    for expert, devices in view.experts.items():
        stack = [succ for succ in view.succs[expert] if (expert, succ) not in view.comm_edges]
        seen: set[str] = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            info = view.info[node]
            local = info.devices is not None and not info.all_devices and info.devices <= devices
            if info.kind == "comm" and not (local and info.collective in TP_COLLECTIVES):
                continue
            reached.setdefault(node, {}).setdefault(devices, []).append(expert)
            if local:
                stack.extend(succ for succ in view.succs[node] if (node, succ) not in view.comm_edges)
    findings = []
    for node, sources in sorted(reached.items(), key=lambda item: (view.info[item[0]].line, view.info[item[0]].col)):
        info = view.info[node]
        if len(sources) < 2 or info.kind in ("comm", "io"):
            continue
        gpus = frozenset[int]().union(*sources)
        merged = [expert for members in sources.values() for expert in members]
        merged = sorted(dict.fromkeys(merged), key=lambda expert: view.info[expert].line)
        where = f"layer {info.layer}: " if info.layer is not None else ""
        findings.append(view.finding(
            "DAG020", info.line,
            f"{where}experts on GPUs {ranges(gpus)} ({node_list(merged, limit=4)}) are merged at "
            f"`{node}` with no All-to-All (or other collective) after them: each GPU holds only "
            "the tokens routed to its own experts, which must go back to where they came from "
            "before they are added up", [node]))
    return findings
