"""`par lint DAG.dot... [--spec SPEC] [--format text|md|json]`: review DAG files from any tool."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from par.commands.common import add_defines, add_limits, compile_one, limits
from par.dsl.frontend.inputs import UsageError, collect_files

if TYPE_CHECKING:
    from collections.abc import Callable

    from par.dsl.dag.types import Dag


def register(sub) -> None:
    parser = sub.add_parser(
        "lint",
        help="check DAG files (Graphviz DOT) written by any tool",
        description=(
            "Check Graphviz DOT deployment DAGs for the defects reviewers look for: cycles, "
            "unconnected collectives, missing AllReduces, skipped layers, shapes that disagree. "
            "With --spec, also compare each file against the DAG par compiles from the spec. "
            "Rules and codes: docs/lint.md."
        ),
    )
    parser.add_argument("dags", nargs="+", metavar="DAG", help=".dot/.gv files or folders of them")
    parser.add_argument("--spec", metavar="SPEC", help="a .par spec to compare the DAGs against")
    parser.add_argument("--format", choices=("text", "md", "json"), default="text", help="report format (default: text)")
    add_defines(parser)
    add_limits(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from par.lint import DOT_SUFFIXES, run_lint  # here: the other commands start without lint

    dags = [str(path) for path in collect_files(args.dags, suffixes=DOT_SUFFIXES)]
    spec_dag: Dag | Callable[[str], Dag] | None = None
    spec_name = None
    if args.spec is not None:
        compiled, inputs = compile_one(args.spec, args.defines, what="--spec", **limits(args))
        if compiled is None:
            return 1
        spec_dag, spec_name = compiled.graph, str(inputs.paths[0])
        if compiled.phases:  # a serving spec: each file against the phase its name says (prefill unless decode)
            phases = {phase: view.graph for phase, view in compiled.phases}

            def spec_dag(path: str) -> Dag:
                return phases["decode" if "decode" in os.path.basename(path) else "prefill"]
    elif args.defines:
        raise UsageError("-D applies to --spec; there is no spec to override")
    text, code = run_lint(dags, fmt=args.format, spec_dag=spec_dag, spec_name=spec_name)
    sys.stdout.write(text)
    return code

