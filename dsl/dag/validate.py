"""The validator: proves the seven invariants of the README (The DAG) on any DAG, ours or built by hand.

Each check returns diagnostics naming the offending nodes. The checks read the DAG in columns
(par.dsl.dag.compact), as expansion writes it: the nodes of one step share an attribute dict, so
a million-node DAG is read through a few hundred dicts that stay in the processor's cache. A DAG
built another way (a `Dag`, or anything laid out as networkx lays out a DiGraph) is put in
columns first, each node keeping its own dict.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from par.dsl.checks.deployment import mesh_coords
from par.dsl.dag import ids, rings
from par.dsl.dag.compact import Adjacency, CompactDag
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


def validate(graph: Dag | CompactDag) -> list[Diagnostic]:
    return _Validator(graph if isinstance(graph, CompactDag) else CompactDag.of(graph)).run()


def _violation(rule: int, message: str, graph: CompactDag, node: int | None) -> Diagnostic:
    """The diagnostic, at the spec span behind the node (its number), if any."""
    span = Span.parse(graph.attrs[node].get("src")) if node is not None else None
    return error(f"DAG invariant {rule} ({INVARIANTS[rule]}): {message}", span)


class _Validator:
    """Reads the DAG in columns (par.dsl.dag.compact): a node is its number; its attributes are
    its dict, or its step's shared one with the layer, stage and devices of the columns."""

    def __init__(self, graph: CompactDag):
        self.graph = graph
        self.name = graph.name
        self.attrs = graph.attrs
        self.devices = graph.devices
        self.succ, self.pred = graph.succ, graph.pred
        self.ends = {graph.index[end]: end for end in ENDS if end in graph.index}
        self.found: list[Diagnostic] = []
        mesh = graph.graph.get("mesh") or {}
        self.tp, self.pp, self.cp = mesh.get("tp", 1), mesh.get("pp", 1), mesh.get("cp", 1)
        # For invariant 7: (layer, op name) -> {pipeline path: how many compute nodes there}; a
        # path is (dp rank, tp rank, cp rank), the ranks a layer's nodes go through across the stages.
        # Paths are numbered as met: a row's key is an int, hashed for free.
        self.on_path: dict[tuple[int, str], dict[int, int]] = {}
        self.path_numbers: dict[tuple[int, int, int], int] = {}  # path -> its number, in the order met
        self.path_of: dict[int, int] = {}  # rank -> its path's number

    def violation(self, rule: int, message: str, node: int | None) -> None:
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
            found = rings.prove(self.graph)
            self.found += [_violation(rule, message, self.graph, None if node is None else self.graph.find(node)) for rule, message, node in found]
        return self.found

    def path_number(self, rank: int) -> int:
        """The number of the rank's pipeline path, (dp rank, tp rank, cp rank)."""
        dp_rank, _, tp_rank = mesh_coords(rank, tp=self.tp, pp=self.pp, cp=self.cp)
        path = (dp_rank, tp_rank, (rank // self.tp) % self.cp)
        return self.path_numbers.setdefault(path, len(self.path_numbers))

    # 1 -----------------------------------------------------------------------------------------

    def topological_order(self) -> list[int] | None:
        """For graphs whose insertion order is not topological: a sort, or the cycle reported."""
        order = _topological_order(self.succ, self.pred)
        if order is None:
            cycle = _cycle(self.succ)
            self.violation(1, f"cycle {' -> '.join(self.name(node) for node in cycle + [cycle[0]])}", cycle[0])
            return None
        find = self.graph.find
        recorded = [
            (before, node) for node, data in enumerate(self.attrs) if (after := data.get("after")) is not None and (before := find(after)) is not None
        ]
        if not recorded:
            return order
        # A recorded issue order (`after`) is a dependency too: sort with it, so that the walk meets it first.
        succ = [list(targets) for targets in self.succ]
        pred = [list(sources) for sources in self.pred]
        ordering: EdgeAttrs = {"operands": ()}  # an order, not data: only the sort reads it
        for before, node in recorded:
            if all(target != node for target, _ in succ[before]):
                succ[before].append((node, ordering))
                pred[node].append((before, ordering))
        order = _topological_order(succ, pred)
        if order is None:
            cycle = _cycle(succ)
            self.violation(6, f"the recorded issue order contradicts the data: {' -> '.join(self.name(node) for node in cycle + [cycle[0]])}", cycle[0])
        return order

    # 2, 3, 4, 5, 6 and what 7 needs, in one pass over the nodes ----------------------------------

    def node_pass(self) -> tuple[bool, list[Diagnostic]]:
        """Checks every node in insertion order. Returns whether every edge went forward in that
        order (a proof of acyclicity) and the issue-order findings, valid only if it did.

        The common cases (one operand, one device) are inlined: this loop runs once per node.
        What a node's dict says is read once per run of nodes sharing it (the ranks of a step),
        and the shapes along an edge once per run of edges between the same two dicts. While
        edges go forward, a node's number is its place in a topological order, and `latest`
        holds, for each node met, the latest communication of its rank that reaches it
        (invariant 6)."""
        attrs, devices_of, succ, pred, ends = self.attrs, self.devices, self.succ, self.pred, self.ends
        layer_of, name_of = self.graph.layer, self.name
        on_path, path_of = self.on_path, self.path_of
        row: dict | None = None  # on_path's entry for the layer and op of the node before
        row_layer = None
        order = _IssueOrder(self.graph, range(len(attrs)))
        latest = order.latest
        forward = True
        data = agreed_source = agreed_target = agreed_edge = None
        plain = False
        for node, data_here in enumerate(attrs):
            if data_here is not data:  # a dict not met just before: read what it says
                data, row = data_here, None
                in_shape, in_placement, arity = data.get("in_shape"), data.get("in_placement"), data.get("arity")
                op, name = data.get("op"), data.get("name")
                per_operand = "operand_shapes" in data or "operand_placements" in data
                communication = op in COMMUNICATION
                on_ring = "ring" in data
                compute = data.get("kind") == "compute"
                # One operand, no communication: with one in-edge, the node's checks are inlined below.
                plain = arity == 1 and not per_operand and not communication and node not in ends
            inputs = pred[node]
            if plain and len(inputs) == 1:  # the common case: its edge's checks, inlined
                source, edge = inputs[0]
                if source >= node:
                    forward = False
                source_data = attrs[source]
                if (source_data is not agreed_source or data is not agreed_target) and self.edge_agrees(source, source_data, node, in_shape, in_placement):
                    agreed_source, agreed_target = source_data, data
                if edge is not agreed_edge:
                    if edge.get("operands", (0,)) == (0,):
                        agreed_edge = edge
                    else:
                        self.missing_operand(node, inputs, 1)
            else:
                for source, edge in inputs:
                    if source >= node:
                        forward = False
                    source_data = attrs[source]
                    if per_operand:  # operands that differ: each edge is held to its own operand's
                        taken_shape, taken_placement = _operand(data, edge)
                        self.edge_agrees(source, source_data, node, taken_shape, taken_placement)
                    elif (source_data is not agreed_source or data is not agreed_target) and self.edge_agrees(source, source_data, node, in_shape, in_placement):
                        agreed_source, agreed_target = source_data, data
                if node in ends:
                    latest[node] = None
                    self.end(node, ends[node])
                    continue
                if not inputs:
                    self.violation(2, f"{name_of(node)} has no in-edges", node)
                elif arity is not None and not _fed_once(inputs, arity):
                    self.missing_operand(node, inputs, arity)
            if not succ[node]:
                self.violation(2, f"{name_of(node)} has no out-edges", node)
            devices = devices_of[node]
            if communication:
                if forward:
                    if on_ring:  # a ring's order is proved apart (par.dsl.dag.rings)
                        latest[node] = order.reaching(inputs, devices[0])
                    else:
                        order.communication(node, devices)
                else:
                    latest[node] = node
                if op in COLLECTIVE_OPS:
                    self.collective(node, devices)
                else:
                    self.point_to_point(node, data, op)
                continue
            if len(devices) != 1:
                latest[node] = None
                continue
            rank = devices[0]
            if len(inputs) == 1:  # _IssueOrder.single_device, inlined
                source = inputs[0][0]
                latest[node] = latest[source] if rank in devices_of[source] else None
            elif forward:
                latest[node] = order.reaching(inputs, rank)
            else:
                latest[node] = None
            layer = layer_of[node]
            if layer is not None and compute:
                if row is None or layer != row_layer or name is None:
                    row, row_layer = on_path.setdefault((layer, name or name_of(node)), {}), layer
                path = path_of.get(rank)
                if path is None:
                    path = path_of[rank] = self.path_number(rank)
                row[path] = row.get(path, 0) + 1
        return forward, [_violation(6, message, self.graph, node) for message, node in order.findings]

    def edge_agrees(self, source: int, source_data: NodeAttrs, node: int, in_shape, in_placement) -> bool:
        """Invariant 5 along one edge: whether the source's output and the node's input agree."""
        out_shape, out_placement = source_data.get("out_shape"), source_data.get("out_placement")
        agree = True
        if out_shape is not in_shape and out_shape != in_shape and out_shape is not None and in_shape is not None:
            agree = self.shapes_agree(source, out_shape, node, in_shape)
        if out_placement != in_placement and out_placement is not None and in_placement is not None:
            agree = False
            self.violation(5, f"{self.name(source)} gives a tensor that is {out_placement} but {self.name(node)} takes {in_placement}", node)
        return agree

    def missing_operand(self, node: int, inputs: list, arity: int) -> None:
        missing = _missing_operand(inputs, arity)
        if missing is not None:
            self.violation(2, f"{self.name(node)} lacks operand {missing} of {arity}", node)

    def shapes_agree(self, source: int, out_shape, node: int, in_shape) -> bool:
        if tuple(out_shape) == tuple(in_shape):  # a list and a tuple of the same sizes agree
            return True
        self.violation(5, f"{self.name(source)} gives {list(out_shape)} but {self.name(node)} takes {list(in_shape)}", node)
        return False

    def end(self, node: int, name: str) -> None:
        if name == "input" and not self.succ[node]:
            self.violation(2, "input feeds nothing", node)
        if name == "output" and not self.pred[node]:
            self.violation(2, "nothing reaches output", node)

    # 3 -----------------------------------------------------------------------------------------

    def collective(self, node: int, devices: list[int]) -> None:
        group = set(devices)
        if self.covers(self.pred[node], group, once=True) and self.covers(self.succ[node], group, once=False):
            return
        for direction, neighbours in (("in", self.pred[node]), ("out", self.succ[node])):
            side = "from" if direction == "in" else "to"
            counts, strangers = self.covered(neighbours, group)
            for stranger in strangers:
                self.violation(3, f"{self.name(node)} has an {direction}-edge {side} {self.name(stranger)}, outside its group {sorted(group)}", node)
            absent = sorted(member for member in group if counts[member] == 0)
            if absent:
                self.violation(3, f"{self.name(node)} has no {direction}-edge {side} gpu {_ranks(absent)} of its group", node)
            doubled = sorted(member for member in group if counts[member] > 1)
            if direction == "in" and doubled:
                self.violation(3, f"{self.name(node)} has several in-edges from gpu {_ranks(doubled)}", node)

    def covers(self, neighbours: list, group: set, *, once: bool) -> bool:
        """The common case of `covered`, decided fast: single-device neighbours inside the group
        that cover each member (exactly once, with `once`). False sends the node to the full count."""
        devices_of, ends = self.devices, self.ends
        met = []
        for other, _ in neighbours:
            devices = devices_of[other]
            if len(devices) != 1 or other in ends:
                return False
            met.append(devices[0])
        return (len(met) == len(group) or not once) and group.issuperset(met) and len(group) == len(set(met))

    def covered(self, neighbours: list, group: set) -> tuple[Counter, list[int]]:
        """How often each member is covered: a single-device node covers its device, a
        collective over the same group covers every member. Also the neighbours outside it."""
        counts: Counter = Counter()
        strangers = []
        for other, _ in neighbours:
            if other in self.ends:  # the graph's input and output serve every rank
                counts.update(group)
                continue
            devices = self.devices[other]
            if len(devices) == 1 and devices[0] in group:
                counts[devices[0]] += 1
            elif set(devices) == group:
                counts.update(devices)
            else:
                strangers.append(other)
        return counts, strangers

    # 4 -----------------------------------------------------------------------------------------

    def point_to_point(self, node: int, data: NodeAttrs, op: str) -> None:
        attrs, name = self.attrs, self.name
        if op == "recv":
            sends = [u for u, _ in self.pred[node] if attrs[u].get("op") == "send"]
            if len(sends) != 1:
                self.violation(4, f"{name(node)} is fed by {len(sends)} sends, not 1", node)
            return
        recvs = [v for v, _ in self.succ[node] if attrs[v].get("op") == "recv"]
        if len(recvs) != 1:
            self.violation(4, f"{name(node)} reaches {len(recvs)} recvs, not 1", node)
            return
        recv = recvs[0]
        if attrs[recv].get("peer") not in self.devices[node] or data.get("peer") not in self.devices[recv]:
            self.violation(4, f"{name(node)} and {name(recv)} do not name each other as peers", node)

    # 6 -----------------------------------------------------------------------------------------

    def issue_order(self, order: list[int]) -> None:
        position = [0] * len(self.attrs)
        for place, node in enumerate(order):
            position[node] = place
        tracker = _IssueOrder(self.graph, position)
        for node in order:
            data = self.attrs[node]
            devices = self.devices[node]
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
        paths = list(self.path_numbers)  # by number
        present: dict[tuple, set[int]] = defaultdict(set)
        for dp_rank in range(mesh.get("dp", 1) if mesh else 0):
            for cp_rank in range(self.cp):
                for tp_rank in range(self.tp):
                    present[(dp_rank, tp_rank, cp_rank)] = set()
        for (layer, _), counts in self.on_path.items():
            for path in counts:
                present[paths[path]].add(layer)
        doubled = {(paths[path], layer, name) for (layer, name), counts in self.on_path.items() for path, count in counts.items() if count > 1}
        for (_path, layer, name), seen in sorted(self.nodes_at(doubled).items()):
            self.violation(7, f"layer {layer} op {name} appears {len(seen)} times on one pipeline path ({', '.join(self.name(node) for node in seen[:3])})", seen[0])
        total = self.graph.graph.get("layers")
        if total is None:
            total = max((layer for layer, _ in self.on_path), default=-1) + 1
        for (dp_rank, tp_rank, cp_rank), layers in sorted(present.items()):
            missing = sorted(set(range(total)) - layers)
            if missing:
                part = f", cp rank {cp_rank}" if self.cp > 1 else ""
                self.violation(7, f"layer {_ranks(missing)} missing on the pipeline path of dp rank {dp_rank}, tp rank {tp_rank}{part}", None)

    def nodes_at(self, places: set[tuple[tuple[int, int, int], int, str]]) -> dict[tuple, list[int]]:
        """The compute nodes at each (pipeline path, layer, op name) of `places`, in order: a
        second walk, made only when a layer appears twice on a path."""
        found: dict[tuple, list[int]] = defaultdict(list)
        if not places:
            return found
        paths = list(self.path_numbers)
        for node, data in enumerate(self.attrs):
            devices, layer = self.devices[node], self.graph.layer[node]
            if len(devices) != 1 or layer is None or data.get("kind") != "compute" or node in self.ends or data.get("op") in COMMUNICATION:
                continue
            key = (paths[self.path_of[devices[0]]], layer, data.get("name") or self.name(node))
            if key in places:
                found[key].append(node)
        return found


def _topological_order(succ: Adjacency, pred: Adjacency) -> list[int] | None:
    """The nodes generation by generation (those without in-edges, then those only they feed, ...),
    as networkx's topological_sort gives them; None when there is a cycle."""
    waiting = {node: len(sources) for node, sources in enumerate(pred) if sources}
    generation = [node for node, sources in enumerate(pred) if not sources]
    order: list[int] = []
    while generation:
        order += generation
        following = []
        for node in generation:
            for target, _ in succ[node]:
                waiting[target] -= 1
                if waiting[target] == 0:
                    following.append(target)
                    del waiting[target]
        generation = following
    return None if waiting else order


def _cycle(succ: Adjacency) -> list[int]:
    """The nodes of one cycle, in order: the first a depth-first walk from each node in turn meets."""
    done: set[int] = set()
    for start in range(len(succ)):
        if start in done:
            continue
        path, on_path = [start], {start}
        branches = [iter(succ[start])]
        while branches:
            step = next(branches[-1], None)
            if step is None:  # every way on from the last node of the path is explored
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                branches.pop()
                continue
            target = step[0]
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


def _fed_once(inputs: list[tuple[int, EdgeAttrs]], arity: int) -> bool:
    """Whether operands 0 .. arity - 1 are each fed exactly once: `_missing_operand` is None,
    decided without sorting (the check of every node with several operands)."""
    fed = count = 0
    try:
        for _, edge in inputs:
            for index in edge.get("operands", (0,)):
                fed |= 1 << index
                count += 1
    except (TypeError, ValueError):  # not an index: a hand-built DAG's; the full check names it
        return False
    return count == arity and fed == (1 << arity) - 1


def _missing_operand(inputs: list[tuple[int, EdgeAttrs]], arity: int) -> int | None:
    """The first operand index not fed exactly once, or None when all are."""
    fed = sorted(i for _, edge in inputs for i in edge.get("operands", (0,)))
    if fed == list(range(arity)):
        return None
    counts = Counter(fed)
    return next((i for i in range(arity) if counts[i] != 1), arity)


class _IssueOrder:
    """Invariant 6. On every rank, each communication must depend on the one before it: a chain,
    not a choice. With collectives shared by their members and the graph acyclic, chains on every
    rank mean every member issues a group's collectives in the same order. Fed nodes in a
    topological order (`position`: each node's place in it), it tracks for each single-device
    node the latest communication of its rank that reaches it."""

    def __init__(self, graph: CompactDag, position: Sequence[int]):
        self.graph, self.position = graph, position
        self.devices = graph.devices
        self.latest: list[int | None] = [None] * len(graph)
        self.previous: dict[int, int] = {}
        self.findings: list[tuple[str, int]] = []

    def communication(self, node: int, devices: list[int]) -> None:
        """`after` (a collective issued before this one by program order) orders it like an in-edge would."""
        graph, position = self.graph, self.position
        inputs = [source for source, _ in graph.pred[node]]
        after = graph.attrs[node].get("after")
        if after is not None:
            before = graph.find(after)
            if before is None or position[before] >= position[node] or graph.devices[before] != devices:
                self.findings.append((f"{graph.name(node)} is issued after {after}, which is no earlier collective of its group", node))
            else:
                inputs.append(before)
        reached_by = self.reaching_each(inputs, devices)
        for rank in devices:
            reached = reached_by.get(rank)
            before = self.previous.get(rank)
            if before is not None and reached != before:
                self.findings.append(
                    (f"gpu {rank} may issue {graph.name(before)} and {graph.name(node)} in either order: neither depends on the other", node)
                )
            self.previous[rank] = node
        self.latest[node] = node  # the latest communication that reaches itself

    def single_device(self, node: int, inputs: list[tuple[int, EdgeAttrs]], rank: int) -> None:
        self.latest[node] = self.reaching(inputs, rank)

    def reaching_each(self, inputs: list[int], ranks: list[int]) -> dict[int, int]:
        """`reaching` for each of `ranks` at once: one pass over the inputs, not one per rank."""
        best: dict[int, int] = {}
        wanted = set(ranks)
        position, latest = self.position, self.latest
        for source in inputs:
            candidate = latest[source]
            if candidate is None:
                continue
            for rank in self.devices[source]:
                if rank in wanted:
                    current = best.get(rank)
                    if current is None or position[candidate] > position[current]:
                        best[rank] = candidate
        return best

    def reaching(self, inputs: list[tuple[int, EdgeAttrs]], rank: int) -> int | None:
        """The latest communication of `rank` that reaches any of `inputs` (met before them)."""
        best = None
        position, latest, devices = self.position, self.latest, self.devices
        for source, _ in inputs:
            if rank not in devices[source]:
                continue
            candidate = latest[source]
            if candidate is not None and (best is None or position[candidate] > position[best]):
                best = candidate
        return best


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
