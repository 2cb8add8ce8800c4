"""What a rank's collective trace must be, read from the DAG alone (the oracle of the trace tests).

The DAG is forward-only and covers one microbatch. The contract checked here:

* forward: the events of each microbatch, in the order the microbatches start, are exactly
  the DAG's collectives that include this rank, in DAG order (a ring's Send/Recv of context
  parallelism, in the DAG's order among themselves; op, group, bytes, peer; a token
  dispatch or combine moves as many rows as the router chose, which differ between ranks and
  steps, so it matches in op and group, and the DAG's bytes are balanced routing's);
* backward: per microbatch, the pipeline's Send/Recv are the duals of the forward ones
  (a gradient comes back from each rank the activation went to, and goes back to each rank
  it came from), with the same bytes; a ring of context parallelism passes each block again
  and its keys' and values' gradient after it, the same way: each forward Send/Recv of a ring
  twice, to and from the same peer, with the same bytes (their order is proven by the run,
  which would deadlock otherwise); tensor-parallel collectives of the backward are not in
  the DAG and are proven right by the gradient check instead;
* step: after the microbatches, only AllReduces over this rank's own groups (gradient
  reduction) appear.
"""

from __future__ import annotations

from itertools import pairwise

import networkx as nx

_KEYS = ("op", "group", "bytes", "peer")
ROUTINGS = ("dispatch", "combine")


def dag_collectives(graph: nx.DiGraph, rank: int) -> list[dict]:
    """The DAG's collectives on `rank` in DAG order (nodes are stored in a topological order);
    a ring's Send/Recv (context parallelism) marked `ring`."""
    found = []
    for node, data in graph.nodes(data=True):
        if data["kind"] == "comm" and rank in data["devices"]:
            event = {"op": data["op"], "group": list(data["devices"]), "bytes": data["bytes"]}
            if "peer" in data:
                event["peer"] = data["peer"]
            if "ring" in data:
                event["ring"] = data["ring"]
            found.append((node, event))
    # A ring's transfers are ordered among themselves (par.dsl.dag.rings proves that order), not
    # with the rank's other collectives: the last send of a ring feeds no later node of its rank.
    nodes = [node for node, event in found if "ring" not in event]
    ordered = nx.DiGraph(graph)  # networkx's own graph, with the issue order the DAG records where the data leaves it open
    ordered.add_edges_from((data["after"], node) for node, data in graph.nodes(data=True) if "after" in data)
    for before, after in pairwise(nodes):  # one chain: the order is not a matter of choice
        assert nx.has_path(ordered, before, after), f"{before} and {after} are not ordered in the DAG"
    return [event for _, event in found]


def _shape(event: dict) -> dict:
    keys = ("op", "group") if event["op"] in ROUTINGS else _KEYS
    return {key: event[key] for key in keys if key in event}


def trace_problems(graph: nx.DiGraph, rank: int, events: list[dict]) -> list[str]:
    """Every way `events` (one rank's trace) breaks the contract above; empty when it holds."""
    microbatches = graph.graph["mesh"]["microbatches"]
    expected = dag_collectives(graph, rank)
    problems = []
    forward = [event for event in events if event["phase"] == "forward"]
    order = list(dict.fromkeys(event["microbatch"] for event in forward))
    if order != list(range(microbatches)):
        problems.append(f"rank {rank}: forward microbatches ran as {order}, not 0..{microbatches - 1}")
    for microbatch in range(microbatches):
        ring_peers = {event["peer"] for event in expected if "ring" in event}
        got = [_shape(e) for e in forward if e["microbatch"] == microbatch]
        for ring in (False, True):
            issued = [event for event in got if (event.get("peer") in ring_peers) == ring]
            drawn = [_shape(e) for e in expected if ("ring" in e) == ring]
            if issued != drawn:
                problems.append(f"rank {rank}, microbatch {microbatch}: forward issued {issued}, the DAG has {drawn}")
        duals = [_dual(event) for event in reversed(expected) if event["op"] in ("send", "recv") and "ring" not in event]
        issued = [_shape(e) for e in events if e["phase"] == "backward" and e["microbatch"] == microbatch]
        pipeline = [event for event in issued if event["op"] in ("send", "recv") and event["peer"] not in ring_peers]
        if pipeline != duals:
            problems.append(f"rank {rank}, microbatch {microbatch}: backward sent/received {pipeline}, expected {duals}")
        rings = sorted(_key(_shape(e)) for e in expected if "ring" in e for _ in range(2))
        passed = sorted(_key(e) for e in issued if e["op"] in ("send", "recv") and e["peer"] in ring_peers)
        if passed != rings:
            problems.append(f"rank {rank}, microbatch {microbatch}: the rings' backward passed {passed}, expected {rings}")
    for event in events:
        if event["phase"] == "step" and (event["op"] != "allreduce" or rank not in event["group"]):
            problems.append(f"rank {rank}: unexpected {event} after the microbatches")
    return problems


def _key(event: dict) -> tuple:
    return tuple(event[key] for key in _KEYS)


def _dual(event: dict) -> dict:
    return dict(event, op="recv" if event["op"] == "send" else "send")
