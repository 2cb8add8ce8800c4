"""Pieces shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from par.dsl.diagnostics import CompileError, Diagnostic, format_all
from par.dsl.escape import terminal
from par.dsl.frontend.inputs import SpecInputs, UsageError, spec_inputs, spec_name
from par.dsl.limits import DEFAULT_MAX_DIAGNOSTICS, DEFAULT_MAX_NODES

if TYPE_CHECKING:
    from par.dsl.compiler import Compiled

# The compiler, the emitters and lint are imported by the commands that run them, not here:
# `par --version` and `par --help` load only the command line.


def add_defines(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-D",
        dest="defines",
        action="append",
        metavar="NAME=VALUE",
        help="override a setting of every spec, e.g. -D hidden=64 -D tp=2 -D dtype=fp32 (repeatable)",
    )


def add_limits(parser: argparse.ArgumentParser, *, nodes: bool = True) -> None:
    """`--max-nodes` (for commands that compile specs to DAGs) and `--max-diagnostics`."""
    if nodes:
        parser.add_argument(
            "--max-nodes",
            type=_positive,
            default=DEFAULT_MAX_NODES,
            metavar="N",
            help=f"refuse, before expanding it, a spec whose DAG would have more than N nodes (default: {DEFAULT_MAX_NODES:,})",
        )
    parser.add_argument(
        "--max-diagnostics",
        type=_positive,
        default=DEFAULT_MAX_DIAGNOSTICS,
        metavar="N",
        help=f"print at most N diagnostics in all, then how many more there were (default: {DEFAULT_MAX_DIAGNOSTICS})",
    )


def limits(args: argparse.Namespace) -> dict[str, int]:
    """The limits `add_limits` gave the command, as `spec_inputs` takes them."""
    return {name: getattr(args, name) for name in ("max_nodes", "max_diagnostics") if hasattr(args, name)}


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, not {value}")
    return value


def compile_each(inputs: SpecInputs, *, defer_proof: bool = False) -> Iterator[tuple[Path, Compiled | None, list[Diagnostic]]]:
    """Compiles every spec; yields (path, result or None, diagnostics to print). With
    `defer_proof`, DAGs come unvalidated (par.dsl.compiler.compile_text)."""
    from par.dsl.compiler import compile_text

    for path in inputs.paths:
        try:
            source, name = inputs.read(path), spec_name(path)
            compiled = compile_text(source, name, inputs.overrides, max_nodes=inputs.max_nodes, defer_proof=defer_proof)
        except CompileError as exc:
            yield path, None, exc.diagnostics
            continue
        yield path, compiled, compiled.warnings


def compile_one(spec: str, defines, *, what: str, **limits: int) -> tuple[Compiled | None, SpecInputs]:
    """Compiles the one spec a command names and prints its diagnostics; None when it fails."""
    inputs = spec_inputs([spec], defines, **limits)
    if len(inputs.paths) != 1:
        raise UsageError(f"{what} takes one spec file")
    _, compiled, diagnostics = next(compile_each(inputs))
    print_diagnostics(diagnostics, inputs)
    return compiled, inputs


def print_diagnostics(diagnostics: list[Diagnostic], inputs: SpecInputs) -> None:
    """Prints diagnostics until the run has printed `inputs.max_diagnostics`, errors before
    warnings when not all fit; then one line says how many more there were."""
    if not diagnostics:
        return
    room = max(inputs.max_diagnostics - inputs.printed, 0)
    shown = diagnostics
    if len(diagnostics) > room:
        shown = sorted(diagnostics, key=lambda d: not d.is_error)[:room]
    inputs.printed += len(shown)
    text = format_all(shown, inputs.sources)
    if len(shown) < len(diagnostics):
        more = len(diagnostics) - len(shown)
        note = (
            f"par: ... and {more:,} more {'diagnostic' if more == 1 else 'diagnostics'} "
            f"(at most {inputs.max_diagnostics} are printed; --max-diagnostics N prints more)"
        )
        text = f"{text}\n{note}" if text else note
    print(text, file=sys.stderr)


def progress(message: str) -> None:
    print(terminal(message), file=sys.stderr, flush=True)
