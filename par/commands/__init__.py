"""One module per `par` subcommand, named as the command; each has `register(subparsers)`."""

from __future__ import annotations

import importlib
from types import ModuleType

# In the order `par --help` lists them. The modules are imported when their command is
# registered (`command`), so that a command line naming one command loads only that one.
COMMANDS = ("check", "build", "cost", "explain", "lint", "fmt", "new")


def command(name: str) -> ModuleType:
    return importlib.import_module(f"par.commands.{name}")
