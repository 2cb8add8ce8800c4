"""One module per `par` subcommand; each has `register(subparsers)`."""

from __future__ import annotations

from . import build, check, explain, fmt

COMMANDS = [check, build, explain, fmt]
