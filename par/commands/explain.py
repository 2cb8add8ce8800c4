"""`par explain SPEC NODE`: why a node of the DAG exists — spec line, rule, placements."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from par.commands.common import (
    add_defines,
    add_limits,
    compile_one,
    limits,
    print_diagnostics,
)
from par.dsl import units
from par.dsl.diagnostics import error
from par.dsl.escape import terminal
from par.dsl.frontend.source import Span

if TYPE_CHECKING:
    from par.dsl.dag.types import Dag


def register(sub) -> None:
    parser = sub.add_parser(
        "explain",
        help="say why a node of a spec's DAG exists",
        description="Print a DAG node's op, devices, shapes, placements, bytes, the spec line behind it and the rule that put it there.",
    )
    parser.add_argument("spec", metavar="SPEC", help="a .par file")
    parser.add_argument("node", metavar="NODE", help="a node id, e.g. layer_0_allreduce_attn")
    add_defines(parser)
    add_limits(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    compiled, inputs = compile_one(args.spec, args.defines, what="explain", **limits(args))
    if compiled is None:
        return 1
    graph = compiled.graph
    if args.node not in graph:
        close = difflib.get_close_matches(args.node, list(graph.nodes), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "par build writes dag.json with every node id"
        print_diagnostics([error(f"the DAG of {args.spec} has no node '{args.node}'", None, hint=hint)], inputs)
        return 1
    print(describe(graph, args.node, inputs.sources))
    return 0


def describe(graph: Dag, node: str, sources) -> str:
    data = graph.nodes[node]
    lines = [f"{node}: {data['op']} ({data['kind']})"]
    where = f"stage {data['stage']}" + (f", layer {data['layer']}" if data.get("layer") is not None else "")
    lines.append(f"  devices:   gpu {units.ranges(data['devices'])} ({where})")
    placement = ""
    if "in_placement" in data:
        placement = f" — placement {data['in_placement']} -> {data['out_placement']} on the tensor-parallel axis"
    lines.append(f"  shapes:    {list(data['in_shape'])} -> {list(data['out_shape'])} per device{placement}")
    if data.get("style"):
        lines.append(f"  style:     {data['style']}-parallel")
    if data["flops"]:
        lines.append(f"  flops:     {data['flops']:,} per device")
    if data["kind"] == "comm":
        lines.append(f"  bytes:     {data['bytes']:,} in per rank, {data['wire_bytes']:,} sent per rank")
    if data.get("backward"):
        lines.append(f"  backward:  {data['backward']}, {data['backward_wire_bytes']:,} sent per rank (training)")
    if data.get("backward_reason"):
        lines.append(f"  backward:  this rank's part of the gradient, nothing sent (training): {data['backward_reason']}")
    if data.get("recompute"):
        recompute = graph.graph["mesh"].get("recompute")
        again = ", its collective issued again" if data["kind"] == "comm" else ""
        lines.append(f"  recompute: the backward runs this node's forward again (recompute {recompute}){again}; it keeps nothing")
    if data.get("reason"):
        lines.append(f"  why:       {data['reason']}")
    lines.append(f"  spec:      {data['src']}")
    span = Span.parse(data["src"])
    source = sources.get(span.file) if span else None
    text = source.line(span.line) if source and span else None
    if text is not None:
        lines.append(f"             {text.strip()}")
    lines.append(f"  inputs:    {_names(list(graph.predecessors(node)))}")
    lines.append(f"  outputs:   {_names(list(graph.successors(node)))}")
    return "\n".join(terminal(line) for line in lines)  # the quoted spec line may hold escape sequences


def _names(nodes: list[str]) -> str:
    if not nodes:
        return "(none)"
    if len(nodes) > 4:
        return ", ".join(nodes[:3]) + f", ... ({len(nodes)} in all)"
    return ", ".join(nodes)
