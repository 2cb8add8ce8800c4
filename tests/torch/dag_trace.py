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
  reduction) appear; with ZeRO (the mesh's `zero`) the data-parallel one is a ReduceScatter of
  the gradients and, after the optimizer's step, an AllGather of the updated weights, over the
  rank's data-parallel group and with the bytes of the cost model's gradient transfers.
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
    if expected and order != list(range(microbatches)):  # a rank without collectives in its forward traces none
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
    zero = graph.graph["mesh"].get("zero", 0)
    for event in events:
        if event["phase"] != "step" or rank not in event["group"]:
            if event["phase"] == "step":
                problems.append(f"rank {rank}: unexpected {event} after the microbatches")
            continue
        if event["op"] != "allreduce" and not (zero and event["op"] in ("reducescatter", "allgather")):
            problems.append(f"rank {rank}: unexpected {event} after the microbatches")
    if zero:
        problems += _zero_problems(graph, rank, [event for event in events if event["phase"] == "step"])
    return problems


def _zero_problems(graph: nx.DiGraph, rank: int, step: list[dict]) -> list[str]:
    """ZeRO's step: a ReduceScatter of the gradients per group (the data-parallel one; with experts
    also the ranks holding the same experts), then after the optimizer's step an AllGather of the
    weights per group, in that order, with the wire bytes of the cost model's gradient transfers
    of this rank."""
    from par.dsl.cost.accounting import transfers  # the cost model: the oracle of the step's collectives

    expected = [(item.kind, list(item.group), item.bytes) for item in transfers(graph)
                if item.phase == "gradients" and item.kind in ("reducescatter", "allgather") and rank in item.senders]
    expected.sort(key=lambda item: item[0] != "reducescatter")  # every reduction before the step, every gather after
    issued = []
    for event in step:
        if event["op"] in ("reducescatter", "allgather"):
            n = len(event["group"])
            wire = event["bytes"] * (n - 1) // n if event["op"] == "reducescatter" else event["bytes"] * (n - 1)
            issued.append((event["op"], event["group"], wire))
    if issued != expected:
        return [f"rank {rank}: ZeRO step issued {issued}, the cost model has {expected}"]
    return []


def _key(event: dict) -> tuple:
    return tuple(event[key] for key in _KEYS)


def _dual(event: dict) -> dict:
    return dict(event, op="recv" if event["op"] == "send" else "send")


def generation_problems(prefill: nx.DiGraph, decode: nx.DiGraph, rank: int, events: list[dict], new: int) -> list[str]:
    """Every way one rank's trace of generation (`--generate --max-new new`) breaks the serving
    contract: the events of step 0 (the prefill) of each microbatch are exactly dag.prefill's
    collectives and Send/Recv on this rank, in DAG order, and those of every decode step
    dag.decode's (op, group, bytes, peer); nothing else is issued."""
    microbatches = prefill.graph["mesh"]["microbatches"]
    expected = {"prefill": dag_collectives(prefill, rank), "decode": dag_collectives(decode, rank)}
    problems = []
    items = {(step, microbatch) for step in range(new) for microbatch in range(microbatches)}
    for event in events:
        item = (event.get("step"), event["microbatch"])
        if item not in items or event["phase"] != ("prefill" if item[0] == 0 else "decode"):
            problems.append(f"rank {rank}: {event} belongs to no step of the generation")
    for step, microbatch in sorted(items):
        phase = "prefill" if step == 0 else "decode"
        got = [_shape(e) for e in events if e.get("step") == step and e["microbatch"] == microbatch]
        if got != [_shape(e) for e in expected[phase]]:
            problems.append(f"rank {rank}, step {step}, microbatch {microbatch}: issued {got}, dag.{phase} has {expected[phase]}")
    return problems
