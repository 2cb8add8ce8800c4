"""Pieces shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from ..compiler import Compiled, compile_text
from ..diagnostics import CompileError, Diagnostic, format_all
from ..escape import terminal
from ..inputs import SpecInputs, UsageError, spec_inputs, spec_name


def add_defines(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-D",
        dest="defines",
        action="append",
        metavar="NAME=VALUE",
        help="override a setting of every spec, e.g. -D hidden=64 -D tp=2 -D dtype=fp32 (repeatable)",
    )


def compile_each(inputs: SpecInputs) -> Iterator[tuple[Path, Compiled | None, list[Diagnostic]]]:
    """Compiles every spec; yields (path, result or None, diagnostics to print)."""
    for path in inputs.paths:
        try:
            compiled = compile_text(inputs.read(path), spec_name(path), inputs.overrides)
        except CompileError as exc:
            yield path, None, exc.diagnostics
            continue
        yield path, compiled, compiled.warnings


def compile_one(spec: str, defines, *, what: str) -> tuple[Compiled | None, SpecInputs]:
    """Compiles the one spec a command names and prints its diagnostics; None when it fails."""
    inputs = spec_inputs([spec], defines)
    if len(inputs.paths) != 1:
        raise UsageError(f"{what} takes one spec file")
    _, compiled, diagnostics = next(compile_each(inputs))
    print_diagnostics(diagnostics, inputs)
    return compiled, inputs


def print_diagnostics(diagnostics: list[Diagnostic], inputs: SpecInputs) -> None:
    if diagnostics:
        print(format_all(diagnostics, inputs.sources), file=sys.stderr)


def progress(message: str) -> None:
    print(terminal(message), file=sys.stderr, flush=True)
