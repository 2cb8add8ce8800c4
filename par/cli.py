"""The `par` command line. Exit codes: 0 ok, 1 diagnostics or stale artifacts, 2 usage error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from par import __version__
from par.commands import COMMANDS, command

DESCRIPTION = """\
par compiles .par deployment specs of transformer models into the full per-device DAG,
proves it well-formed, and writes the artifacts generated from it."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before the parser, which loads every command's module
        print(f"par {__version__}")
        return 0
    from par.dsl.escape import terminal  # here: `par --version` loads nothing of the compiler
    from par.dsl.frontend.inputs import UsageError

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except UsageError as exc:
        print(terminal(f"par: error: {exc}"), file=sys.stderr)  # it may quote a path
        return 2
    except KeyboardInterrupt:
        print("par: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # a node budget raised past what this machine holds
        print("par: error: out of memory; build a smaller deployment or keep --max-nodes lower", file=sys.stderr)
        return 1


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line's parser. When `argv` starts with a command's name, only that command
    is registered: the other commands' modules (and what they import) are not loaded, and the
    arguments parse the same, as the top-level parser hands everything after the name to it."""
    parser = argparse.ArgumentParser(prog="par", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"par {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    for name in named:
        command(name).register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
