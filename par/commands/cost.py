"""`par cost SPEC [SPEC...]`: per-device params, memory, FLOPs, bytes sent, bubble, step time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from par.commands.common import (
    add_defines,
    add_limits,
    compile_each,
    limits,
    print_diagnostics,
)
from par.dsl.checks.hardware import PROFILES
from par.dsl.diagnostics import Diagnostic
from par.dsl.escape import terminal
from par.dsl.frontend.inputs import UsageError, spec_inputs
from par.dsl.frontend.source import Span

if TYPE_CHECKING:
    from par.dsl.checks.deployment import Hardware


def register(sub) -> None:
    parser = sub.add_parser(
        "cost",
        help="per-device params, memory, FLOPs, bytes sent, pipeline bubble and step time",
        description=(
            "Print the cost of each spec's deployment, per device and in total, read from its DAG. "
            "With several specs, also a side-by-side table with the differences from the first."
        ),
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help=".par files or folders of them")
    parser.add_argument(
        "--hardware",
        metavar="PROFILE",
        help=f"estimate on a built-in hardware profile ({', '.join(sorted(PROFILES))}) in place of each spec's own",
    )
    add_defines(parser)
    add_limits(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from par.codegen.cost.serving import format_serving, format_serving_comparison
    from par.codegen.cost.text import format_comparison, format_cost
    from par.dsl.cost.model import cost_of
    from par.dsl.cost.serving import spec_serving_cost

    hardware = None if args.hardware is None else _profile(args.hardware)
    inputs = spec_inputs(args.specs, args.defines, **limits(args))
    costs, serving, failed = [], [], 0
    for _, compiled, diagnostics in compile_each(inputs):
        print_diagnostics(diagnostics, inputs)
        if compiled is None:
            failed += 1
            continue
        if compiled.phases:  # a serving spec: compared with the other serving specs
            serving.append(spec_serving_cost(compiled, hardware))
            continue
        costs.append(cost_of(compiled.graph, hardware=hardware or compiled.deployment.hardware))
    texts = []
    if costs:
        texts.append(format_cost(costs[0]) if len(costs) == 1 else format_comparison(costs))
    if serving:
        texts.append(format_serving(serving[0]) if len(serving) == 1 else format_serving_comparison(serving))
    text = "\n".join(texts)
    print("\n".join(terminal(line) for line in text.split("\n")), end="")  # spec names head the columns
    return 1 if failed else 0


def _profile(name: str) -> Hardware:
    """`--hardware NAME`, resolved as a spec's `hardware NAME` is, with the same message when unknown."""
    from par.dsl.checks.hwcheck import resolve_hardware  # here: the command line starts without the checks
    from par.dsl.frontend.spec import HardwareDecl

    problems: list[Diagnostic] = []
    hardware = resolve_hardware(HardwareDecl(name, (), Span.point("--hardware"), None), problems)
    if hardware is None:
        problem = problems[0]
        raise UsageError(f"{problem.message}; {problem.hint}" if problem.hint else problem.message)
    return hardware
