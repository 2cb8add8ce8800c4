"""The whole flow for one spec: text -> Spec -> Deployment -> Program -> DAG, validated."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from .check import check
from .deployment import Deployment
from .diagnostics import CompileError, Diagnostic
from .expand import expand
from .inputs import parse_defines, read_spec
from .lower import lower
from .parser import parse_spec
from .program import Program
from .spec import Override
from .validate import validate


@contextmanager
def gc_paused():
    """Expansion allocates millions of small dicts and no cycles: the cyclic collector would
    rescan the growing heap again and again for nothing. Afterwards the new objects go straight
    to the oldest generation (freeze, then unfreeze), so the next young collection does not
    walk them all either; a full collection still sees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


@dataclass
class Compiled:
    deployment: Deployment
    program: Program
    graph: nx.DiGraph
    warnings: list[Diagnostic] = field(default_factory=list)


def compile_file(path: str | Path, defines: Sequence[str] = ()) -> Compiled:
    """Compile a spec file with `-D`-style overrides (`["hidden=64", "tp=2"]`)."""
    overrides, _ = parse_defines(defines)
    source = read_spec(path)
    return compile_text(source.text, source.name, overrides)


def compile_text(text: str, file: str, overrides: Sequence[Override] = ()) -> Compiled:
    """Raises CompileError carrying every diagnostic; a returned DAG is proven well-formed."""
    parsed = parse_spec(text, file)
    if parsed.errors:  # the items that did parse are still checked, to report every problem at once
        try:
            _, warnings = check(parsed.spec, overrides)
        except CompileError as exc:
            raise CompileError([*parsed.errors, *exc.diagnostics]) from None
        raise CompileError([*parsed.errors, *warnings])
    deployment, warnings = check(parsed.spec, overrides)
    program = lower(deployment)
    with gc_paused():
        graph = expand(program)
        problems = validate(graph)
    if problems:
        raise CompileError(problems + warnings)
    return Compiled(deployment, program, graph, warnings)
