"""One module per `par` subcommand; each has `register(subparsers)`."""

from __future__ import annotations

from par.commands import build, check, cost, explain, fmt, lint, new

COMMANDS = [check, build, cost, explain, lint, fmt, new]
