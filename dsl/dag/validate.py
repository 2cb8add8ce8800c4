"""The validator: proves the seven invariants of the README (The DAG) on any DAG, ours or built by hand.

Each check returns diagnostics naming the offending nodes. The checks read the adjacency dicts
directly (`_succ`, `_pred`, `_node`, laid out as networkx lays out a DiGraph, so a DiGraph
built by hand is validated alike): on million-node graphs the public views cost more than the
checks themselves.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from par.dsl.checks.deployment import mesh_coords
from par.dsl.dag import ids, rings
from par.dsl.dag.types import Dag, EdgeAttrs, NodeAttrs
from par.dsl.diagnostics import Diagnostic, error
from par.dsl.frontend.source import Span
from par.dsl.registry.collectives import COLLECTIVES

COLLECTIVE_OPS = frozenset(name for name, spec in COLLECTIVES.items() if spec.group in ("tp", "ep"))
POINT_TO_POINT = frozenset(name for name, spec in COLLECTIVES.items() if spec.group == "pipeline")
COMMUNICATION = COLLECTIVE_OPS | POINT_TO_POINT
ENDS = frozenset({ids.INPUT, ids.OUTPUT})

INVARIANTS = {
    1: "acyclic",
    2: "every node but input/output has in-edges and out-edges",
    3: "a collective has one in-edge from, and one out-edge to, each member of its group",
    4: "every send has exactly one matching recv",
    5: "shapes (and placements, where stated) agree along every edge",
    6: "all members of a group issue their collectives in the same order",
    7: "every layer appears exactly once per pipeline path",
    8: "every ring of context parallelism closes and brings every block to every rank",
}


def validate(graph: Dag) -> list[Diagnostic]:
    return _Validator(graph).run()


def _violation(rule: int, message: str, graph: Dag, node: str | None) -> Diagnostic:
    data = graph.nodes[node] if node is not None and node in graph else None
    span = Span.parse(data.get("src")) if data is not None else None
    return error(f"DAG invariant {rule} ({INVARIANTS[rule]}): {message}", span)



class _Validator:
    def __init__(self, graph: Dag):
        self.graph = graph
        self.nodes: dict[str, NodeAttrs] = graph._node
        self.succ: dict[str, dict[str, EdgeAttrs]] = graph._succ
        self.pred: dict[str, dict[str, EdgeAttrs]] = graph._pred
        self.found: list[Diagnostic] = []
        mesh = graph.graph.get("mesh") or {}
        self.tp, self.pp, self.cp = mesh.get("tp", 1), mesh.get("pp", 1), mesh.get("cp", 1)
        # (pipeline path, layer, op name) -> the compute node(s) there, for invariant 7; a path is
        # (dp rank, tp rank, cp rank), the ranks a layer's nodes go through across the stages.
        self.on_path: dict[tuple, object] = {}
        self.path_of: dict[int, tuple[int, int, int]] = {}

    def violation(self, rule: int, message: str, node: str | None) -> None:
        self.found.append(_violation(rule, message, self.graph, node))

    def run(self) -> list[Diagnostic]:
        forward, order_findings = self.node_pass()
        if forward:  # insertion order is topological: the issue-order check made in passing holds
            self.found += order_findings
        else:
            order = self.topological_order()
            if order is not None:
                self.issue_order(order)
        self.layers()
        if self.cp > 1:  # only context parallelism makes rings
            self.found += [_violation(rule, message, self.graph, node) for rule, message, node in rings.prove(self.graph)]
        return self.found

    def path(self, rank: int) -> tuple[int, int, int]:
        dp_rank, _, tp_rank = mesh_coords(rank, tp=self.tp, pp=self.pp, cp=self.cp)
        return (dp_rank, tp_rank, (rank // self.tp) % self.cp)

    # 1 -----------------------------------------------------------------------------------------

    def topological_order(self) -> list[str] | None:
        """For graphs whose insertion order is not topological: a sort, or the cycle reported."""
        order = _topological_order(self.succ, self.pred)
        if order is None:
            cycle = _cycle(self.succ)
            self.violation(1, f"cycle {' -> '.join(cycle + [cycle[0]])}", cycle[0])
            return None
        recorded = [(data["after"], node) for node, data in self.nodes.items() if data.get("after") in self.nodes]
        if not recorded:
            return order
        # A recorded issue order (`after`) is a dependency too: sort with it, so that the walk meets it first.
        succ: dict[str, dict] = {node: dict(targets) for node, targets in self.succ.items()}
        pred: dict[str, dict] = {node: dict(sources) for node, sources in self.pred.items()}
        for before, node in recorded:
            succ[before][node] = {}
            pred[node][before] = {}
        order = _topological_order(succ, pred)
        if order is None:
            cycle = _cycle(succ)
            self.violation(6, f"the recorded issue order contradicts the data: {' -> '.join(cycle + [cycle[0]])}", cycle[0])
        return order

    # 2, 3, 4, 5, 6 and what 7 needs, in one pass over the nodes ----------------------------------

    def node_pass(self) -> tuple[bool, list[Diagnostic]]:
        """Checks every node in insertion order. Returns whether every edge went forward in that
        order (a proof of acyclicity) and the issue-order findings, valid only if it did.

        The common cases (one operand, one device) are inlined: this loop runs once per node.
        While edges go forward, `latest` holds every node met so far (what proves it), with the
        latest communication of its rank that reaches it (invariant 6); positions are kept for
        communications only, the nodes that issue order compares."""
        nodes, succ, pred = self.nodes, self.succ, self.pred
        on_path, path_of = self.on_path, self.path_of
        order = _IssueOrder(nodes, pred)
        position, latest = order.position, order.latest
        forward = True
        for node, data in nodes.items():
            inputs = pred[node]
            get = data.get
            in_shape = get("in_shape")
            in_placement = get("in_placement")
            per_operand = "operand_shapes" in data or "operand_placements" in data
            for source in inputs:
                if forward and source not in latest:
                    forward = False
                source_data = nodes[source]
                if per_operand:  # operands that differ: each edge is held to its own operand's
                    in_shape, in_placement = _operand(data, inputs[source])
                out_shape = source_data.get("out_shape")
                # Nodes of one step share their shape objects: `is` settles most edges at once.
                if out_shape is not in_shape and out_shape != in_shape and out_shape is not None and in_shape is not None:
                    self.shapes_differ(source, out_shape, node, in_shape)
                out_placement = source_data.get("out_placement")
                if out_placement != in_placement and out_placement is not None and in_placement is not None:
                    self.violation(5, f"{source} gives a tensor that is {out_placement} but {node} takes {in_placement}", node)
            if node in ENDS:
                latest[node] = None
                self.ends(node, inputs, succ[node])
                continue
            arity = data.get("arity")
            if not inputs:
                self.violation(2, f"{node} has no in-edges", node)
            elif arity is not None:
                if arity == 1 and len(inputs) == 1:  # _missing_operand's common case, inlined
                    (edge,) = inputs.values()
                    if edge.get("operands", (0,)) != (0,):
                        self.missing_operand(node, inputs, arity)
                elif not _fed_once(inputs, arity):
                    self.missing_operand(node, inputs, arity)
            if not succ[node]:
                self.violation(2, f"{node} has no out-edges", node)
            op = get("op")
            devices = data.get("devices") or []
            if op in COMMUNICATION:
                if forward:
                    if "ring" in data:  # a ring's order is proved apart (par.dsl.dag.rings)
                        latest[node] = order.reaching(inputs, devices[0])
                    else:
                        position[node] = len(latest)  # how many nodes were met before it
                        order.communication(node, devices)
                else:
                    latest[node] = node
                if op in COLLECTIVE_OPS:
                    self.collective(node, data)
                else:
                    self.point_to_point(node, data, op)
                continue
            if len(devices) != 1:
                latest[node] = None
                continue
            rank = devices[0]
            if len(inputs) == 1:  # _IssueOrder.single_device, inlined
                (source,) = inputs
                latest[node] = latest.get(source) if rank in (nodes[source].get("devices") or ()) else None
            elif forward:
                latest[node] = order.reaching(inputs, rank)
            else:
                latest[node] = None
            layer = get("layer")
            if layer is not None and get("kind") == "compute":
                path = path_of.get(rank)
                if path is None:
                    path = path_of[rank] = self.path(rank)
                key = (path, layer, get("name") or node)
                seen = on_path.setdefault(key, node)
                if seen is not node:
                    on_path[key] = (seen if isinstance(seen, list) else [seen]) + [node]
        return forward, [_violation(6, message, self.graph, node) for message, node in order.findings]

    def missing_operand(self, node: str, inputs: dict, arity: int) -> None:
        missing = _missing_operand(inputs, arity)
        if missing is not None:
            self.violation(2, f"{node} lacks operand {missing} of {arity}", node)

    def shapes_differ(self, source: str, out_shape, node: str, in_shape) -> None:
        if tuple(out_shape) != tuple(in_shape):  # a list and a tuple of the same sizes agree
            self.violation(5, f"{source} gives {list(out_shape)} but {node} takes {list(in_shape)}", node)

    def ends(self, node: str, inputs: dict, outputs: dict) -> None:
        if node == "input" and not outputs:
            self.violation(2, "input feeds nothing", node)
        if node == "output" and not inputs:
            self.violation(2, "nothing reaches output", node)

    # 3 -----------------------------------------------------------------------------------------

    def collective(self, node: str, data: NodeAttrs) -> None:
        group = set(data.get("devices") or [])
        if self.covers(self.pred[node], group, once=True) and self.covers(self.succ[node], group, once=False):
            return
        for direction, neighbours in (("in", self.pred[node]), ("out", self.succ[node])):
            side = "from" if direction == "in" else "to"
            counts, strangers = self.covered(neighbours, group)
            for stranger in strangers:
                self.violation(3, f"{node} has an {direction}-edge {side} {stranger}, outside its group {sorted(group)}", node)
            absent = sorted(member for member in group if counts[member] == 0)
            if absent:
                self.violation(3, f"{node} has no {direction}-edge {side} gpu {_ranks(absent)} of its group", node)
            doubled = sorted(member for member in group if counts[member] > 1)
            if direction == "in" and doubled:
                self.violation(3, f"{node} has several in-edges from gpu {_ranks(doubled)}", node)

    def covers(self, neighbours, group: set, *, once: bool) -> bool:
        """The common case of `covered`, decided fast: single-device neighbours inside the group
        that cover each member (exactly once, with `once`). False sends the node to the full count."""
        nodes = self.nodes
        met = []
        for other in neighbours:
            devices = nodes[other].get("devices") or ()
            if len(devices) != 1 or other in ENDS:
                return False
            met.append(devices[0])
        return (len(met) == len(group) or not once) and group.issuperset(met) and len(group) == len(set(met))

    def covered(self, neighbours, group: set) -> tuple[Counter, list[str]]:
        """How often each member is covered: a single-device node covers its device, a
        collective over the same group covers every member. Also the neighbours outside it."""
        counts: Counter = Counter()
        strangers = []
        for other in neighbours:
            if other in ENDS:  # the graph's input and output serve every rank
                counts.update(group)
                continue
            devices = self.nodes[other].get("devices") or []
            if len(devices) == 1 and devices[0] in group:
                counts[devices[0]] += 1
            elif set(devices) == group:
                counts.update(devices)
            else:
                strangers.append(other)
        return counts, strangers

    # 4 -----------------------------------------------------------------------------------------

    def point_to_point(self, node: str, data: NodeAttrs, op: str) -> None:
        nodes = self.nodes
        if op == "recv":
            sends = [u for u in self.pred[node] if nodes[u].get("op") == "send"]
            if len(sends) != 1:
                self.violation(4, f"{node} is fed by {len(sends)} sends, not 1", node)
            return
        recvs = [v for v in self.succ[node] if nodes[v].get("op") == "recv"]
        if len(recvs) != 1:
            self.violation(4, f"{node} reaches {len(recvs)} recvs, not 1", node)
            return
        recv = nodes[recvs[0]]
        if recv.get("peer") not in (data.get("devices") or []) or data.get("peer") not in (recv.get("devices") or []):
            self.violation(4, f"{node} and {recvs[0]} do not name each other as peers", node)

    # 6 -----------------------------------------------------------------------------------------

    def issue_order(self, order: list[str]) -> None:
        tracker = _IssueOrder(self.nodes, self.pred)
        tracker.position.update((node, index) for index, node in enumerate(order))
        for node in order:
            data = self.nodes[node]
            devices = data.get("devices") or []
            if data.get("op") in COMMUNICATION and "ring" not in data:
                tracker.communication(node, devices)
            elif len(devices) == 1:
                tracker.single_device(node, self.pred[node], devices[0])
            else:
                tracker.latest[node] = None  # met: a recorded issue order may name it
        for message, node in tracker.findings:
            self.violation(6, message, node)

    # 7 -----------------------------------------------------------------------------------------

    def layers(self) -> None:
        """Every layer once per pipeline path: the ranks (dp rank, ·, tp rank) across stages."""
        mesh = self.graph.graph.get("mesh") or {}
        present: dict[tuple, set[int]] = defaultdict(set)
        for dp_rank in range(mesh.get("dp", 1) if mesh else 0):
            for cp_rank in range(self.cp):
                for tp_rank in range(self.tp):
                    present[(dp_rank, tp_rank, cp_rank)] = set()
        for path, layer in {(path, layer) for path, layer, _ in self.on_path}:
            present[path].add(layer)
        doubled = sorted((key, seen) for key, seen in self.on_path.items() if isinstance(seen, list))
        for (_path, layer, name), seen in doubled:
            self.violation(7, f"layer {layer} op {name} appears {len(seen)} times on one pipeline path ({', '.join(seen[:3])})", seen[0])
        total = self.graph.graph.get("layers")
        if total is None:
            total = max((key[1] for key in self.on_path), default=-1) + 1
        for (dp_rank, tp_rank, cp_rank), layers in sorted(present.items()):
            missing = sorted(set(range(total)) - layers)
            if missing:
                part = f", cp rank {cp_rank}" if self.cp > 1 else ""
                self.violation(7, f"layer {_ranks(missing)} missing on the pipeline path of dp rank {dp_rank}, tp rank {tp_rank}{part}", None)


def _topological_order(succ: dict[str, dict], pred: dict[str, dict]) -> list[str] | None:
    """The nodes generation by generation (those without in-edges, then those only they feed, ...),
    as networkx's topological_sort gives them; None when there is a cycle."""
    waiting = {node: len(sources) for node, sources in pred.items() if sources}
    generation = [node for node, sources in pred.items() if not sources]
    order: list[str] = []
    while generation:
        order += generation
        following = []
        for node in generation:
            for target in succ[node]:
                waiting[target] -= 1
                if waiting[target] == 0:
                    following.append(target)
                    del waiting[target]
        generation = following
    return None if waiting else order


def _cycle(succ: dict[str, dict]) -> list[str]:
    """The nodes of one cycle, in order: the first a depth-first walk from each node in turn meets."""
    done: set[str] = set()
    for start in succ:
        if start in done:
            continue
        path, on_path = [start], {start}
        branches = [iter(succ[start])]
        while branches:
            target = next(branches[-1], None)
            if target is None:  # every way on from the last node of the path is explored
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                branches.pop()
                continue
            if target in on_path:
                return path[path.index(target):]
            if target not in done:
                path.append(target)
                on_path.add(target)
                branches.append(iter(succ[target]))
    raise AssertionError("no cycle, though the topological order found one")


def _operand(data, edge) -> tuple:
    """The local shape and placement a node takes at the first operand an edge feeds."""
    index = (edge.get("operands") or (0,))[0]
    shapes, placements = data.get("operand_shapes"), data.get("operand_placements")
    shape = shapes[index] if shapes and index < len(shapes) else data.get("in_shape")
    placement = placements[index] if placements and index < len(placements) else data.get("in_placement")
    return shape, placement


def _fed_once(inputs: dict, arity: int) -> bool:
    """Whether operands 0 .. arity - 1 are each fed exactly once: `_missing_operand` is None,
    decided without sorting (the check of every node with several operands)."""
    fed = count = 0
    try:
        for edge in inputs.values():
            for index in edge.get("operands", (0,)):
                fed |= 1 << index
                count += 1
    except (TypeError, ValueError):  # not an index: a hand-built DAG's; the full check names it
        return False
    return count == arity and fed == (1 << arity) - 1


def _missing_operand(inputs: dict, arity: int) -> int | None:
    """The first operand index not fed exactly once, or None when all are."""
    fed = sorted(i for edge in inputs.values() for i in edge.get("operands", (0,)))
    if fed == list(range(arity)):
        return None
    counts = Counter(fed)
    return next((i for i in range(arity) if counts[i] != 1), arity)


class _IssueOrder:
    """Invariant 6. On every rank, each communication must depend on the one before it: a chain,
    not a choice. With collectives shared by their members and the graph acyclic, chains on every
    rank mean every member issues a group's collectives in the same order. Fed nodes in a
    topological order, it tracks for each single-device node the latest communication of its
    rank that reaches it."""

    def __init__(self, nodes: dict[str, NodeAttrs], pred: dict[str, dict[str, EdgeAttrs]]):
        self.nodes, self.pred = nodes, pred
        self.position: dict[str, int] = {}
        self.latest: dict[str, str | None] = {}
        self.previous: dict[int, str] = {}
        self.findings: list[tuple[str, str]] = []

    def communication(self, node: str, devices) -> None:
        """`after` (a collective issued before this one by program order) orders it like an in-edge would."""
        inputs = list(self.pred[node])
        after = self.nodes[node].get("after")
        if after is not None:
            if after not in self.latest or self.nodes[after].get("devices") != devices:
                self.findings.append((f"{node} is issued after {after}, which is no earlier collective of its group", node))
            else:
                inputs = [*inputs, after]
        reached_by = self.reaching_each(inputs, devices)
        for rank in devices:
            reached = reached_by.get(rank)
            before = self.previous.get(rank)
            if before is not None and reached != before:
                self.findings.append(
                    (f"gpu {rank} may issue {before} and {node} in either order: neither depends on the other", node)
                )
            self.previous[rank] = node
        self.latest[node] = node  # the latest communication that reaches itself

    def single_device(self, node: str, inputs: dict, rank: int) -> None:
        self.latest[node] = self.reaching(inputs, rank)

    def reaching_each(self, inputs, ranks) -> dict[int, str]:
        """`reaching` for each of `ranks` at once: one pass over the inputs, not one per rank."""
        best: dict[int, str] = {}
        wanted = set(ranks)
        position, latest = self.position, self.latest
        for source in inputs:
            candidate = latest.get(source)
            if candidate is None:
                continue
            for rank in self.nodes[source].get("devices") or ():
                if rank in wanted:
                    current = best.get(rank)
                    if current is None or position[candidate] > position[current]:
                        best[rank] = candidate
        return best

    def reaching(self, inputs, rank: int) -> str | None:
        """The latest communication of `rank` that reaches any of `inputs` (met before them)."""
        best = None
        position, latest = self.position, self.latest
        for source in inputs:
            if rank not in (self.nodes[source].get("devices") or ()):
                continue
            candidate = latest.get(source)
            if candidate is not None and (best is None or position[candidate] > position[best]):
                best = candidate
        return best


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
