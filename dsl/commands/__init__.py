"""One module per `par` subcommand; each has `register(subparsers)`."""

from __future__ import annotations

from . import build, check, explain

COMMANDS = [check, build, explain]
