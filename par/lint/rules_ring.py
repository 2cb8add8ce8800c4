"""Ring attention (context parallelism) in DAGs drawn by others: the blocks of keys and values
passed from GPU to GPU must go round a closed ring (DAG021), never to the GPU that holds them
(DAG022), and reach every GPU of the ring (DAG023).

A ring transfer is an edge labelled as passing keys and values ("KV transfer", "KV send"), or a
Send/Recv whose label names keys and values ("Send (kv_step1)", "KV Ring Send") and the edge it
sends along; its ends are the GPUs of the nodes it joins (the label's GPU, or the id's: `d1_`,
`_gpu3`). Transfers are grouped by layer.
"""

from __future__ import annotations

import re
from collections import defaultdict

from par.dsl.units import ranges
from par.lint.findings import Finding
from par.lint.labels import device_in_id
from par.lint.view import DagView, is_invisible

_KV = re.compile(r"(?<![a-z])kv(?![a-z])|key[s]?\s*(?:and|&|,)\s*value", re.IGNORECASE)
_PASS = re.compile(r"transfer|send|pass|ring|p2p", re.IGNORECASE)
# `d1_l0_ring_stage_1`: a device number at the start of an id, as `d<k>_`.
_LEADING_DEVICE = re.compile(r"^(?:d|dev|device|gpu)(\d+)_", re.IGNORECASE)


def _device(view: DagView, node: str) -> int | None:
    info = view.info.get(node)
    if info is not None and info.single_device is not None:
        return info.single_device
    match = _LEADING_DEVICE.search(node)
    if match:
        return int(match.group(1))
    return device_in_id(node)


def _is_kv_transfer_node(view: DagView, node: str) -> bool:
    info = view.info.get(node)
    return info is not None and info.collective == "send" and bool(_KV.search(" ".join((info.title, *info.lines, node))))


def ring_transfers(view: DagView) -> list[tuple[int | None, int, int, str, int]]:
    """(layer, from GPU, to GPU, the node that sends, line) of every ring transfer drawn."""
    found = []
    for edge in view.graph.edges:
        if is_invisible(edge.attrs):
            continue
        label = edge.attrs.get("label", "")
        labelled = bool(_KV.search(label) and _PASS.search(label))
        if not labelled and not _is_kv_transfer_node(view, edge.src):
            continue
        source, target = _device(view, edge.src), _device(view, edge.dst)
        if source is None or target is None:
            continue
        info = view.info.get(edge.src)
        layer = info.layer if info is not None else None
        line = view.edge_line.get((edge.src, edge.dst), info.line if info is not None else 0)
        found.append((layer, source, target, edge.src, line))
    return found


def check_rings(view: DagView) -> list[Finding]:
    findings: list[Finding] = []
    by_layer: dict[int | None, list[tuple[int, int, str, int]]] = defaultdict(list)
    for layer, source, target, node, line in ring_transfers(view):
        if source == target:
            findings.append(view.finding(
                "DAG022", line,
                f"`{node}` passes a block of keys and values from GPU {source} to the same GPU: a ring step "
                "sends to the next GPU of the ring", [node]))
            continue
        by_layer[layer].append((source, target, node, line))
    for layer, transfers in by_layer.items():
        where = f"layer {layer}: " if layer is not None else ""
        following = defaultdict(set)
        previous = defaultdict(set)
        first_send: dict[int, tuple[str, int]] = {}
        first_recv: dict[int, tuple[str, int]] = {}
        for source, target, node, line in transfers:
            following[source].add(target)
            previous[target].add(source)
            first_send.setdefault(source, (node, line))
            first_recv.setdefault(target, (node, line))
        members = sorted(set(following) | set(previous))
        for device in members:
            if device not in following:
                node, line = first_recv[device]
                chain = _chain_to(device, previous)
                findings.append(view.finding(
                    "DAG021", line,
                    f"{where}the ring of key/value transfers does not close: {' -> '.join(f'GPU {d}' for d in chain)} "
                    f"ends at GPU {device}, which passes its block to no GPU", [node]))
        for device in members:
            if device not in previous:
                node, line = first_send[device]
                others = [d for d in members if d != device]
                findings.append(view.finding(
                    "DAG023", line,
                    f"{where}GPU {device} receives no block of keys and values: those of GPU {ranges(others)} "
                    "never reach it, so its queries never attend to their tokens", [node]))
    return findings


def _chain_to(device: int, previous: dict[int, set[int]]) -> list[int]:
    """The transfers that lead to `device`, walked back while each GPU has one sender."""
    chain = [device]
    while len(previous.get(chain[0], ())) == 1:
        (before,) = previous[chain[0]]
        if before in chain:
            break
        chain.insert(0, before)
    return chain
