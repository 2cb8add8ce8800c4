"""The validator's proof of the rings of context parallelism (par.dsl.dag.ring), on any DAG
whose sends and recvs say which ring and step they belong to (`ring`, `ring_step`).

For each ring:
- it closes: at every step each member sends once and receives once, never to itself, and the
  sends form one cycle through every member;
- every block reaches every rank: following each block from its owner along the sends, each
  member holds every member's block exactly once;
- it cannot deadlock: each member's transfers, in the order the DAG records (`ring_step`, then
  `after` within a step), are run with blocking sends and receives (a send waits until its peer
  posts the matching receive, and the other way round); the run must end with every transfer
  done. The even/odd order does: at each step some even rank's send meets an odd rank's
  receive, and each completed pair frees the rank waiting on it, around the ring.
"""

from __future__ import annotations

from collections import defaultdict

from par.dsl.dag.compact import CompactDag
from par.dsl.dag.types import EdgeAttrs, NodeAttrs

# (invariant, message, node) as the validator reports them.
Finding = tuple[int, str, str | None]


def prove(graph: CompactDag) -> list[Finding]:
    nodes, pred, rings = _transfers(graph)
    found: list[Finding] = []
    for ring in sorted(rings):
        transfers = rings[ring]
        closes = _closes(ring, transfers, nodes)
        found += closes
        if not closes:
            found += _reaches(ring, transfers, nodes, pred)
            found += _runs(ring, transfers, nodes)
    return found


def _transfers(graph: CompactDag) -> tuple[dict[str, NodeAttrs], dict[str, dict[str, EdgeAttrs]], dict[str, list[str]]]:
    """The rings' sends and recvs by id, with their in-edges, as a `Dag` holds them, and each
    ring's transfers in order; their sources' dicts too (only their `op` and `ring` are read).
    The rest of the DAG stays in columns: a compile proves its rings without building the `Dag`."""
    nodes: dict[str, NodeAttrs] = {}
    pred: dict[str, dict[str, EdgeAttrs]] = {}
    rings: dict[str, list[str]] = defaultdict(list)
    for number, data in enumerate(graph.attrs):
        if "ring" in data and data.get("op") in ("send", "recv"):
            node = graph.name(number)
            nodes[node] = graph.data(number)
            rings[data["ring"]].append(node)
            sources = pred[node] = {}
            for source, edge in graph.pred[number]:
                name = graph.name(source)
                sources[name] = edge
                nodes.setdefault(name, graph.attrs[source])
    return nodes, pred, rings


def _rank(data: NodeAttrs) -> int:
    return (data.get("devices") or [-1])[0]


def _closes(ring: str, transfers: list[str], nodes: dict[str, NodeAttrs]) -> list[Finding]:
    found: list[Finding] = []
    members = sorted({_rank(nodes[node]) for node in transfers})
    by_step: dict[int, dict[str, dict[int, list[str]]]] = defaultdict(lambda: {"send": defaultdict(list), "recv": defaultdict(list)})
    for node in transfers:
        data = nodes[node]
        by_step[data.get("ring_step", 0)][data["op"]][_rank(data)].append(node)
    for step in sorted(by_step):
        sends, recvs = by_step[step]["send"], by_step[step]["recv"]
        before = len(found)
        for rank in members:
            for op, issued in (("send", sends), ("recv", recvs)):
                count = len(issued.get(rank, []))
                if count != 1:
                    at = issued[rank][0] if issued.get(rank) else transfers[0]
                    found.append((8, f"ring {ring}, step {step}: gpu {rank} has {count} {op}s, not 1", at))
        following: dict[int, int] = {}
        for rank, held in sends.items():
            for node in held:
                peer = nodes[node].get("peer")
                if peer == rank:
                    found.append((8, f"ring {ring}, step {step}: {node} sends to its own gpu {rank}", node))
                elif peer is not None:
                    following[rank] = peer
        if len(found) > before:
            continue
        cycle = _cycle_from(members[0], following)
        if sorted(cycle) != members:
            left = [rank for rank in members if rank not in cycle]
            found.append(
                (8, f"ring {ring}, step {step} does not close: the sends go {' -> '.join(map(str, cycle))}, leaving gpu {', '.join(map(str, left))} out", sends[members[0]][0])
            )
    return found


def _cycle_from(start: int, following: dict[int, int]) -> list[int]:
    cycle = [start]
    rank = following.get(start)
    while rank is not None and rank != start and rank not in cycle:
        cycle.append(rank)
        rank = following.get(rank)
    return cycle if rank == start else cycle + ([rank] if rank is not None else [])


def _reaches(ring: str, transfers: list[str], nodes: dict[str, NodeAttrs], pred: dict[str, dict[str, EdgeAttrs]]) -> list[Finding]:
    """Follows each block from its owner: a send passes on its own block or the one its rank received."""
    origin: dict[str, int] = {}

    def owner(node: str) -> int:
        if node in origin:
            return origin[node]
        data = nodes[node]
        if data["op"] == "recv":
            sends = [source for source in pred[node] if nodes[source].get("op") == "send"]
            found = owner(sends[0]) if sends else -1
        else:
            received = [source for source in pred[node] if nodes[source].get("op") == "recv" and "ring" in nodes[source]]
            found = owner(received[0]) if received else _rank(data)
        origin[node] = found
        return found

    held: dict[int, list[int]] = defaultdict(list)
    members = sorted({_rank(nodes[node]) for node in transfers})
    for rank in members:
        held[rank].append(rank)
    for node in sorted(transfers, key=lambda n: nodes[n].get("ring_step", 0)):
        if nodes[node]["op"] == "recv":
            held[_rank(nodes[node])].append(owner(node))
    found: list[Finding] = []
    for rank in members:
        missing = [other for other in members if other not in held[rank]]
        twice = sorted({other for other in held[rank] if held[rank].count(other) > 1})
        if missing:
            found.append((8, f"ring {ring}: the keys and values of gpu {', '.join(map(str, missing))} never reach gpu {rank}", _first_of(rank, transfers, nodes)))
        if twice:
            found.append((8, f"ring {ring}: gpu {rank} receives the block of gpu {', '.join(map(str, twice))} more than once", _first_of(rank, transfers, nodes)))
    return found


def _first_of(rank: int, transfers: list[str], nodes: dict[str, NodeAttrs]) -> str:
    return next(node for node in transfers if _rank(nodes[node]) == rank)


def _runs(ring: str, transfers: list[str], nodes: dict[str, NodeAttrs]) -> list[Finding]:
    """Runs the ring with blocking transfers in the recorded order; a rank left waiting is a deadlock."""
    queues: dict[int, list[str]] = defaultdict(list)
    for node in transfers:
        queues[_rank(nodes[node])].append(node)
    for queue in queues.values():
        step_of = {node: nodes[node].get("ring_step", 0) for node in queue}
        # Within a step, a transfer recorded `after` another of the same step comes second.
        queue.sort(key=lambda node: (step_of[node], nodes[node].get("after") in step_of and step_of.get(nodes[node].get("after", "")) == step_of[node]))
    heads = {rank: 0 for rank in queues}
    progress = True
    while progress:
        progress = False
        for rank, queue in queues.items():
            if heads[rank] >= len(queue):
                continue
            node = queue[heads[rank]]
            data = nodes[node]
            if data["op"] != "send":
                continue
            peer = data.get("peer")
            if peer is None or peer not in queues or heads[peer] >= len(queues[peer]):
                continue
            waiting = nodes[queues[peer][heads[peer]]]
            if waiting["op"] == "recv" and waiting.get("peer") == rank and waiting.get("ring_step") == data.get("ring_step"):
                heads[rank] += 1
                heads[peer] += 1
                progress = True
    stuck = [queue[heads[rank]] for rank, queue in sorted(queues.items()) if heads[rank] < len(queue)]
    if not stuck:
        return []
    shown = ", ".join(stuck[:4]) + (f" and {len(stuck) - 4} more" if len(stuck) > 4 else "")
    return [(6, f"ring {ring} deadlocks with blocking sends in the recorded order: {shown} wait for each other", stuck[0])]
