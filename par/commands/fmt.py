"""`par fmt SPEC... [--check | --write]`: print specs in canonical form."""

from __future__ import annotations

import sys

from par.commands.common import add_limits, limits, print_diagnostics
from par.dsl.diagnostics import CompileError
from par.dsl.frontend.inputs import spec_inputs, spec_name


def register(sub) -> None:
    parser = sub.add_parser(
        "fmt",
        help="print specs in canonical form",
        description=(
            "Print each spec in canonical form (comments kept). --write rewrites the files; "
            "--check exits 1 listing the files that are not formatted."
        ),
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help=".par files or folders of them")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; list files that would change")
    mode.add_argument("--write", action="store_true", help="rewrite files in place (atomically; through symbolic links; mode kept)")
    add_limits(parser, nodes=False)
    parser.set_defaults(run=run)


def run(args) -> int:
    from par.build import write_atomic  # here: `par --help` starts without the parser and the emitters
    from par.dsl.frontend.format import format_spec
    from par.dsl.frontend.parser import parse_with_comments

    inputs = spec_inputs(args.specs, None, **limits(args))
    failed = changed = 0
    for path in inputs.paths:
        try:
            text = inputs.read(path)
            formatted = format_spec(*parse_with_comments(text, spec_name(path)), text)
        except CompileError as exc:
            print_diagnostics(exc.diagnostics, inputs)
            failed += 1
            continue
        if args.check:
            if formatted != text:
                print(f"{path}: not formatted")
                changed += 1
        elif args.write:
            if formatted != text:
                try:
                    write_atomic(path, formatted.encode("utf-8"))
                except OSError as exc:
                    print(f"par: error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
                    failed += 1
                    continue
                print(f"{path}: formatted", file=sys.stderr)
        else:
            sys.stdout.write(formatted)
    return 1 if failed or changed else 0
