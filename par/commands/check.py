"""`par check SPEC...`: parse, check, lower, expand and validate; write nothing."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from par.commands.common import (
    add_defines,
    add_limits,
    compile_each,
    limits,
    print_diagnostics,
)
from par.dsl.escape import terminal
from par.dsl.frontend.inputs import spec_inputs

if TYPE_CHECKING:
    from par.dsl.dag.types import Dag


def register(sub) -> None:
    parser = sub.add_parser(
        "check",
        help="parse, check, expand and validate specs",
        description="Compile each spec to its DAG and prove the DAG well-formed; print every diagnostic.",
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help=".par files or folders of them")
    add_defines(parser)
    add_limits(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    inputs = spec_inputs(args.specs, args.defines, **limits(args))
    failed = 0
    for path, compiled, diagnostics in compile_each(inputs):
        print_diagnostics(diagnostics, inputs)
        if compiled is None:
            failed += 1
            continue
        if compiled.phases:  # a serving spec: the prefill and the decode step
            shown = "; ".join(f"{phase}: {summary(each.graph)}" for phase, each in compiled.phases)
            print(terminal(f"{path}: ok ({shown})"))
            continue
        print(terminal(f"{path}: ok ({summary(compiled.graph)})"))
    return 1 if failed else 0


def summary(graph: Dag) -> str:
    kinds = Counter(data["op"] for _, data in graph.nodes(data=True) if data["kind"] == "comm")
    parts = [f"{graph.number_of_nodes()} nodes", f"{graph.number_of_edges()} edges"]
    parts += [f"{count} {op}" for op, count in sorted(kinds.items())]
    return ", ".join(parts)
