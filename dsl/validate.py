"""The validator: proves DESIGN.md's seven invariants on any DAG, ours or built by hand.

Each check returns diagnostics naming the offending nodes. The checks read networkx's
adjacency dicts directly (`_succ`, `_pred`, `_node`): on million-node graphs the public views
cost more than the checks themselves.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import networkx as nx

from .diagnostics import Diagnostic, error
from .source import Span

COLLECTIVE_OPS = frozenset({"allgather", "allreduce", "reducescatter", "alltoall"})
POINT_TO_POINT = frozenset({"send", "recv"})
ENDS = frozenset({"input", "output"})

INVARIANTS = {
    1: "acyclic",
    2: "every node but input/output has in-edges and out-edges",
    3: "a collective has one in-edge from, and one out-edge to, each member of its group",
    4: "every send has exactly one matching recv",
    5: "shapes agree along every edge",
    6: "all members of a group issue their collectives in the same order",
    7: "every layer appears exactly once per pipeline path",
}


def validate(graph: nx.DiGraph) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    order = _topological_order(graph, found)
    found += _check_degrees(graph)
    found += _check_collectives(graph)
    found += _check_point_to_point(graph)
    found += _check_shapes(graph)
    if order is not None:
        found += _check_issue_order(graph, order)
    found += _check_layers(graph)
    return found


def _violation(rule: int, message: str, graph: nx.DiGraph, node: str | None) -> Diagnostic:
    span = _span(graph._node[node].get("src")) if node is not None and node in graph._node else None
    return error(f"DAG invariant {rule} ({INVARIANTS[rule]}): {message}", span)


def _span(src) -> Span | None:
    if not isinstance(src, str):
        return None
    parts = src.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    line, col = int(parts[1]), int(parts[2])
    return Span(parts[0], line, col, line, col + 1)


def _devices(data: dict) -> list:
    return list(data.get("devices") or ())


# 1 ---------------------------------------------------------------------------------------------


def _topological_order(graph: nx.DiGraph, found: list[Diagnostic]) -> list[str] | None:
    """Insertion order if every edge goes forward in it (a proof of acyclicity), else a real sort."""
    position = {node: index for index, node in enumerate(graph._node)}
    if all(position[u] < position[v] for u, nbrs in graph._succ.items() for v in nbrs):
        return list(graph._node)
    try:
        return list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(graph)]
        path = " -> ".join(cycle + [cycle[0]])
        found.append(_violation(1, f"cycle {path}", graph, cycle[0]))
        return None


# 2 ---------------------------------------------------------------------------------------------


def _check_degrees(graph: nx.DiGraph) -> list[Diagnostic]:
    found = []
    succ, pred = graph._succ, graph._pred
    for node, data in graph._node.items():
        if node in ENDS:
            if node == "input" and not succ[node]:
                found.append(_violation(2, "input feeds nothing", graph, node))
            if node == "output" and not pred[node]:
                found.append(_violation(2, "nothing reaches output", graph, node))
            continue
        if not pred[node]:
            found.append(_violation(2, f"{node} has no in-edges", graph, node))
        elif "arity" in data:
            operands = Counter(i for edge in pred[node].values() for i in edge.get("operands", (0,)))
            missing = [i for i in range(data["arity"]) if operands[i] != 1]
            if missing:
                found.append(_violation(2, f"{node} lacks operand {missing[0]} of {data['arity']}", graph, node))
        if not succ[node]:
            found.append(_violation(2, f"{node} has no out-edges", graph, node))
    return found


# 3 ---------------------------------------------------------------------------------------------


def _covered(graph: nx.DiGraph, neighbours, group: set) -> tuple[Counter, list[str]]:
    """How often each member is covered by these neighbours, and the neighbours outside the group.

    A single-device node covers its device; a collective over the same group covers every member.
    """
    counts: Counter = Counter()
    strangers = []
    for other in neighbours:
        if other in ENDS:
            continue
        devices = _devices(graph._node[other])
        if len(devices) == 1 and devices[0] in group:
            counts[devices[0]] += 1
        elif set(devices) == group:
            counts.update(devices)
        else:
            strangers.append(other)
    return counts, strangers


def _check_collectives(graph: nx.DiGraph) -> list[Diagnostic]:
    found = []
    for node, data in graph._node.items():
        if data.get("op") not in COLLECTIVE_OPS:
            continue
        group = set(_devices(data))
        for direction, neighbours in (("in", graph._pred[node]), ("out", graph._succ[node])):
            counts, strangers = _covered(graph, neighbours, group)
            for stranger in strangers:
                found.append(_violation(3, f"{node} has an {direction}-edge {'from' if direction == 'in' else 'to'} {stranger}, outside its group {sorted(group)}", graph, node))
            absent = sorted(member for member in group if counts[member] == 0)
            if absent:
                side = "from" if direction == "in" else "to"
                found.append(_violation(3, f"{node} has no {direction}-edge {side} gpu {_ranks(absent)} of its group", graph, node))
            if direction == "in":
                doubled = sorted(member for member in group if counts[member] > 1)
                if doubled:
                    found.append(_violation(3, f"{node} has several in-edges from gpu {_ranks(doubled)}", graph, node))
    return found


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")


# 4 ---------------------------------------------------------------------------------------------


def _check_point_to_point(graph: nx.DiGraph) -> list[Diagnostic]:
    found = []
    nodes = graph._node
    for node, data in nodes.items():
        op = data.get("op")
        if op == "send":
            recvs = [v for v in graph._succ[node] if nodes[v].get("op") == "recv"]
            if len(recvs) != 1:
                found.append(_violation(4, f"{node} reaches {len(recvs)} recvs, not 1", graph, node))
                continue
            recv = nodes[recvs[0]]
            if recv.get("peer") not in _devices(data) or data.get("peer") not in _devices(recv):
                found.append(_violation(4, f"{node} and {recvs[0]} do not name each other as peers", graph, node))
            if tuple(recv.get("in_shape") or ()) != tuple(data.get("out_shape") or ()):
                found.append(_violation(4, f"{node} sends {data.get('out_shape')} but {recvs[0]} expects {recv.get('in_shape')}", graph, node))
        elif op == "recv":
            sends = [u for u in graph._pred[node] if nodes[u].get("op") == "send"]
            if len(sends) != 1:
                found.append(_violation(4, f"{node} is fed by {len(sends)} sends, not 1", graph, node))
    return found


# 5 ---------------------------------------------------------------------------------------------


def _check_shapes(graph: nx.DiGraph) -> list[Diagnostic]:
    found = []
    nodes = graph._node
    for u, nbrs in graph._succ.items():
        out_shape = nodes[u].get("out_shape")
        for v in nbrs:
            in_shape = nodes[v].get("in_shape")
            if out_shape is None or in_shape is None or out_shape == in_shape:
                continue
            if tuple(out_shape) != tuple(in_shape):
                found.append(_violation(5, f"{u} gives {list(out_shape)} but {v} takes {list(in_shape)}", graph, v))
    return found


# 6 ---------------------------------------------------------------------------------------------


def _check_issue_order(graph: nx.DiGraph, order: list[str]) -> list[Diagnostic]:
    """On every rank, each communication must depend on the one before it: a chain, not a choice.

    With collectives shared by their members and the graph acyclic, chains on every rank mean
    every member issues a group's collectives in the same order.
    """
    nodes, succ = graph._node, graph._succ
    position = {node: index for index, node in enumerate(order)}
    per_rank: dict[int, list[str]] = defaultdict(list)
    for node in order:
        data = nodes[node]
        if data.get("op") in COLLECTIVE_OPS or data.get("op") in POINT_TO_POINT:
            for rank in _devices(data):
                per_rank[rank].append(node)
    found = []
    for rank, sequence in sorted(per_rank.items()):
        for before, after in zip(sequence, sequence[1:]):
            if not _reaches(succ, nodes, position, before, after, rank):
                found.append(
                    _violation(6, f"gpu {rank} may issue {before} and {after} in either order: neither depends on the other", graph, after)
                )
                break
    return found


def _reaches(succ, nodes, position, start: str, goal: str, rank: int) -> bool:
    limit = position[goal]
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        for nxt in succ[node]:
            if nxt == goal:
                return True
            if nxt in seen or position[nxt] > limit or rank not in (nodes[nxt].get("devices") or ()):
                continue
            seen.add(nxt)
            stack.append(nxt)
    return False


# 7 ---------------------------------------------------------------------------------------------


def _check_layers(graph: nx.DiGraph) -> list[Diagnostic]:
    mesh = graph.graph.get("mesh") or {}
    tp, pp = mesh.get("tp", 1), mesh.get("pp", 1)
    counts: Counter = Counter()
    where: dict[tuple, list] = defaultdict(list)
    layers_seen: set[int] = set()
    for node, data in graph._node.items():
        layer = data.get("layer")
        if layer is None or data.get("kind") != "compute":
            continue
        devices = _devices(data)
        if len(devices) != 1:
            continue
        rank = devices[0]
        path = (rank // (tp * pp), rank % tp)
        key = (path, layer, data.get("name") or data.get("op"))
        counts[key] += 1
        where[key].append(node)
        layers_seen.add(layer)
    total = graph.graph.get("layers")
    if total is None:
        total = max(layers_seen) + 1 if layers_seen else 0
    found = []
    by_path: dict[tuple, set[int]] = defaultdict(set)
    if mesh:
        for dp_rank in range(mesh.get("dp", 1)):
            for tp_rank in range(tp):
                by_path[(dp_rank, tp_rank)] = set()
    for path, layer, _ in counts:
        by_path[path].add(layer)
    for (path, layer, name), count in sorted(counts.items()):
        if count > 1:
            found.append(_violation(7, f"layer {layer} op {name} appears {count} times on one pipeline path ({', '.join(where[(path, layer, name)][:3])})", graph, where[(path, layer, name)][0]))
    for path, present in sorted(by_path.items()):
        missing = sorted(set(range(total)) - present)
        if missing:
            dp_rank, tp_rank = path
            found.append(_violation(7, f"layer {_ranks(missing)} missing on the pipeline path of dp rank {dp_rank}, tp rank {tp_rank}", graph, None))
    return found
