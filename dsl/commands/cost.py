"""`par cost SPEC [SPEC...]`: per-device params, memory, FLOPs, bytes sent, bubble, step time."""

from __future__ import annotations

from ..hardware import PROFILES
from ..hwcheck import builtin_hardware
from ..inputs import UsageError, spec_inputs
from .common import add_defines, compile_each, print_diagnostics


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
    parser.set_defaults(run=run)


def run(args) -> int:
    from codegen.cost.model import (
        cost_of,  # the one subcommand that reads the emitters' cost model
    )
    from codegen.cost.text import format_comparison, format_cost

    hardware = None
    if args.hardware is not None:
        hardware = builtin_hardware(args.hardware)
        if hardware is None:
            raise UsageError(f"unknown hardware profile '{args.hardware}'; built-in profiles: {', '.join(sorted(PROFILES))}")
    inputs = spec_inputs(args.specs, args.defines)
    costs, failed = [], 0
    for _, compiled, diagnostics in compile_each(inputs):
        print_diagnostics(diagnostics, inputs)
        if compiled is None:
            failed += 1
            continue
        costs.append(cost_of(compiled.graph, hardware=hardware or compiled.deployment.hardware))
    if len(costs) == 1:
        print(format_cost(costs[0]), end="")
    elif costs:
        print(format_comparison(costs), end="")
    return 1 if failed else 0
