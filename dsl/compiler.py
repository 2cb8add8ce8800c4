"""The whole flow for one spec: text -> Spec -> Deployment -> Program -> DAG, validated."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from par.dsl.checks.check import check
from par.dsl.checks.deployment import Deployment
from par.dsl.dag.compact import CompactDag
from par.dsl.dag.expand import expand, node_count
from par.dsl.dag.types import Dag
from par.dsl.dag.validate import validate
from par.dsl.diagnostics import CompileError, Diagnostic, error
from par.dsl.frontend.inputs import parse_defines, read_spec
from par.dsl.frontend.parser import parse_spec
from par.dsl.frontend.source import Span
from par.dsl.frontend.spec import Override, Spec
from par.dsl.limits import DEFAULT_MAX_NODES
from par.dsl.lowering.lower import lower
from par.dsl.lowering.program import Program
from par.dsl.lowering.serving import PHASES, Phase, phase_deployment, with_cache


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
    """A spec compiled: its deployment, the layer's program and the validated DAG."""

    deployment: Deployment
    program: Program  # the first layer's (every layer's, unless the model names a block per range)
    compact: CompactDag  # the DAG as expansion wrote it and the validator proved it; `graph` to read it
    warnings: list[Diagnostic] = field(default_factory=list)
    # (first layer, last layer, program) per range of a model with a block per range; else empty.
    layer_programs: tuple[tuple[int, int, Program], ...] = ()
    # A serving spec: each phase (prefill, decode) compiled on its own, its DAG in `graph`. The
    # spec's own `graph` is then the prefill's; `program` stays the layer as it trains (model.py).
    phases: tuple[tuple[Phase, Compiled], ...] = ()
    # False: compiled with `defer_proof`, the DAG not yet validated; `prove` it before trusting it.
    proven: bool = True

    @property
    def graph(self) -> Dag:
        """The DAG, networkx-shaped: built on first use (`par check` never needs it)."""
        with gc_paused():
            return self.compact.to_dag()


def prove(compiled: Compiled) -> list[Diagnostic]:
    """Validates the DAG of a spec compiled with `defer_proof`: the validator's findings, none
    when the DAG is well-formed (it is then marked proven)."""
    if compiled.proven:
        return []
    with gc_paused():
        problems = validate(compiled.compact)
    compiled.proven = not problems
    return problems


def compile_file(path: str | Path, defines: Sequence[str] = (), *, max_nodes: int = DEFAULT_MAX_NODES) -> Compiled:
    """Compile a spec file with `-D`-style overrides (`["hidden=64", "tp=2"]`)."""
    overrides, _ = parse_defines(defines)
    source = read_spec(path)
    return compile_text(source.text, source.name, overrides, max_nodes=max_nodes)


def compile_text(
    text: str, file: str, overrides: Sequence[Override] = (), *, max_nodes: int = DEFAULT_MAX_NODES, defer_proof: bool = False
) -> Compiled:
    """Raises CompileError carrying every diagnostic; a returned DAG is proven well-formed,
    unless `defer_proof`: then a training spec's DAG is returned unvalidated (`proven` False)
    for the caller to `prove`, e.g. while it renders the artifacts it writes only if that passes.
    A deployment whose DAG would have more than `max_nodes` nodes is refused before expansion."""
    parsed = parse_spec(text, file)
    if parsed.errors:  # the items that did parse are still checked, to report every problem at once
        try:
            _, warnings = check(parsed.spec, overrides)
        except CompileError as exc:
            raise CompileError([*parsed.errors, *exc.diagnostics]) from None
        raise CompileError([*parsed.errors, *warnings])
    deployment, warnings = check(parsed.spec, overrides)
    program = lower(deployment)
    layer_programs = _lower_each(deployment, program)
    if deployment.serve is not None:
        phases = _serving(parsed.spec, overrides, deployment, warnings, max_nodes)
        return Compiled(deployment, program, phases[0][1].compact, warnings, layer_programs, phases)
    nodes = node_count(program, layer_programs)
    if nodes > max_nodes:
        raise CompileError([_over_budget(deployment, nodes, max_nodes)] + warnings)
    with gc_paused():
        graph = expand(program, layer_programs)
        problems = [] if defer_proof else validate(graph)
    if problems:
        raise CompileError(problems + warnings)
    return Compiled(deployment, program, graph, warnings, layer_programs, proven=not defer_proof)


def _serving(
    spec: Spec, overrides: Sequence[Override], deployment: Deployment, warnings: list[Diagnostic], max_nodes: int
) -> tuple[tuple[Phase, Compiled], ...]:
    """The prefill and the decode step, each lowered, expanded and validated. A decode step has
    one token per sequence: it is checked again without sequence parallelism, whose `place`
    statements and collectives differ."""
    phases = []
    for phase in PHASES:
        base = deployment
        if phase == "decode" and deployment.mesh.sequence_parallel:
            off = Override("sp", "off", (), Span.point(deployment.file))
            base, _ = check(spec, [*overrides, off])
        phases.append((phase, _phase(phase_deployment(base, phase), phase, deployment, warnings, max_nodes)))
    return tuple(phases)


def _phase(deployment: Deployment, phase: Phase, spec_deployment: Deployment, warnings: list[Diagnostic], max_nodes: int) -> Compiled:
    first = lower(deployment)
    cached: dict[int, Program] = {}

    def cache(program: Program) -> Program:  # each block's program once, shared as lowering shares it
        if id(program) not in cached:
            cached[id(program)] = with_cache(program, phase)
        return cached[id(program)]

    layer_programs = tuple((start, last, cache(each)) for start, last, each in _lower_each(deployment, first))
    program = cache(first)
    nodes = node_count(program, layer_programs)
    if nodes > max_nodes:
        raise CompileError([_over_budget(deployment, nodes, max_nodes)] + warnings)
    with gc_paused():
        graph = expand(program, layer_programs)
        problems = validate(graph)
    if problems:
        raise CompileError(problems + warnings)
    serve = spec_deployment.serve
    assert serve is not None
    graph.graph["model"]["seq"] = spec_deployment.model.seq  # the longest context; the phase's tokens are in microbatch_shape
    graph.graph["serve"] = {
        "phase": phase,
        "prompt": serve.prompt,
        "generate": serve.generate,
        "context": serve.context,
        "kv_dtype": serve.kv_dtype,
    }
    return Compiled(deployment, program, graph, warnings, layer_programs)


def _lower_each(deployment: Deployment, first: Program) -> tuple[tuple[int, int, Program], ...]:
    """Each block of a model with a block per range of layers, lowered once; every error at once."""
    programs: dict[str, Program] = {deployment.block.name: first}
    diags: list[Diagnostic] = []
    for _, _, block in deployment.layer_blocks:
        if block.name not in programs:
            try:
                programs[block.name] = lower(replace(deployment, block=block))
            except CompileError as exc:
                diags += exc.diagnostics
    if diags:
        raise CompileError(diags)
    return tuple((start, last, programs[block.name]) for start, last, block in deployment.layer_blocks)


def _over_budget(deployment: Deployment, nodes: int, max_nodes: int) -> Diagnostic:
    model, mesh = deployment.model, deployment.mesh
    return error(
        f"the DAG would have {nodes:,} nodes, more than the node budget of {max_nodes:,}",
        deployment.span_of("tp"),
        hint=(
            f"{model.layers:,} layers on tp {mesh.tp} × pp {mesh.pp} × dp {mesh.dp}; make the model or the mesh "
            "smaller, or raise the budget with --max-nodes N if this machine has the memory"
        ),
    )
