"""Every artifact `par build` writes for a spec, in order: (file name, renderer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from par.codegen.cost import render_report, render_timeline
from par.codegen.dot.emit import emit_compact_dot, emit_dot
from par.codegen.json_dag import emit_json
from par.codegen.pytorch.emit import emit_model
from par.codegen.renderer import Renderer, Skip
from par.codegen.svg import FULL_SVG_MAX_NODES, SVG_CHOICES, svg_renderer
from par.dsl.checks.deployment import Deployment
from par.dsl.compiler import Compiled, gc_paused
from par.dsl.cost import Cost, spec_cost

T = TypeVar("T")


def renderers(svg: str = "auto") -> list[tuple[str, Renderer]]:
    """(file name, renderer) of every artifact, in order; a fresh list for each build. `svg` is
    one of SVG_CHOICES.

    What several artifacts are made from (each drawing's DOT text, the cost) is computed once
    per spec: the build calls every renderer of a spec before it moves to the next spec.
    """
    if svg not in SVG_CHOICES:
        raise ValueError(f"svg must be one of {', '.join(SVG_CHOICES)}, not {svg!r}")
    full, compact, cost = once_per_spec(emit_dot), once_per_spec(emit_compact_dot), once_per_spec(spec_cost)
    drawings: list[tuple[str, Renderer]] = [
        ("dag.svg", svg_renderer(full, file="dag.svg", max_nodes=None if svg == "full" else FULL_SVG_MAX_NODES)),
        ("dag.compact.svg", svg_renderer(compact, file="dag.compact.svg")),
    ]
    listed: list[tuple[str, Renderer]] = [
        ("dag.json", lambda compiled: emit_json(compiled.graph)),
        ("dag.dot", full),
        ("dag.compact.dot", compact),
        *(drawings if svg != "none" else []),
        ("model.py", model_or_skip),
        ("report.md", lambda compiled: report(compiled, cost)),
        ("timeline.svg", lambda compiled: timeline(compiled, cost)),
    ]
    return [(name, gc_paused_while(renderer)) for name, renderer in listed]


def gc_paused_while(renderer: Renderer) -> Renderer:
    """`renderer`, run with the cyclic GC paused (par.dsl.compiler.gc_paused). A drawing of a
    large DAG makes a view object per node and per edge, and each full collection they set off
    walks the whole DAG again: about a third of dag.dot's time at 236,000 nodes. Renderers make
    no cycles worth collecting at once."""

    def paused(compiled: Compiled) -> str | bytes | Skip:
        with gc_paused():
            return renderer(compiled)

    return paused


def report(compiled: Compiled, cost: Callable[[Compiled], Cost]) -> str:
    """report.md: the training cost, or a serving spec's."""
    if compiled.phases:
        from par.codegen.cost.serving import render_serving_report  # here: a training spec's build does not load it
        from par.dsl.cost.serving import spec_serving_cost

        return render_serving_report(spec_serving_cost(compiled))
    return render_report(cost(compiled))


def timeline(compiled: Compiled, cost: Callable[[Compiled], Cost]) -> str | Skip:
    """timeline.svg draws a training step's pipeline schedule: a serving spec has none."""
    if compiled.phases:
        return Skip("timeline.svg not written for serving specs: report.md gives the prefill and decode times per stage")
    return render_timeline(cost(compiled))


DAG_PREFIX = "dag."  # the artifacts drawn from one DAG: a serving spec writes them once per phase


def spec_jobs(compiled: Compiled, renderers: list[tuple[str, Renderer]]) -> list[tuple[str, Renderer, Compiled]]:
    """(file name, renderer, what it renders) for one spec. A serving spec writes each DAG
    artifact once per phase (`dag.prefill.json`, `dag.decode.json`, ...), phase by phase so that
    what a phase's artifacts share is computed once; a training spec writes today's names."""
    if not compiled.phases:
        return [(name, renderer, compiled) for name, renderer in renderers]
    jobs = [
        (f"{DAG_PREFIX}{phase}.{name[len(DAG_PREFIX):]}", renderer, view)
        for phase, view in compiled.phases
        for name, renderer in renderers
        if name.startswith(DAG_PREFIX)
    ]
    return jobs + [(name, renderer, compiled) for name, renderer in renderers if not name.startswith(DAG_PREFIX)]


def not_generated(deployment: Deployment) -> str | None:
    """Why model.py is not written for the deployment; None when it is."""
    mesh = deployment.mesh
    sharded = mesh.zero and mesh.dp * mesh.cp > 1  # a gradient group to shard over
    if sharded and mesh.zero == 3:
        return "model.py not written for zero 3: par generates ZeRO stages 1 and 2, not yet sharded weights (their gathers per layer)"
    return None


def model_or_skip(compiled: Compiled) -> str | Skip:
    """model.py, or the notice why it is not written for this deployment."""
    why = not_generated(compiled.deployment)
    return Skip(why) if why is not None else emit_model(compiled)


def once_per_spec(function: Callable[[Compiled], T]) -> Callable[[Compiled], T]:
    """`function`, computed once for the compiled spec it was last called with, and kept until the next."""
    last: list[tuple[Compiled, T]] = []

    def cached(compiled: Compiled) -> T:
        if not last or last[0][0] is not compiled:
            last[:] = [(compiled, function(compiled))]
        return last[0][1]

    return cached


# How long each artifact takes relative to the others on a large DAG (measured on
# bench/llama3_405b_cp.par; a drawing is Graphviz's time): it only shares out the work of a
# build that renders in several processes (par.workers.balanced).
# Matched by the end of the file name, the longest ending first.
RELATIVE_COST = {
    "timeline.svg": 0.1, "compact.svg": 3.0, ".svg": 10.0, "report.md": 3.0, "compact.dot": 1.0, ".dot": 3.0, ".json": 2.0,
}


def made_with(name: str) -> str:
    """The artifact whose computation `name` reuses (`renderers`' once_per_spec): a drawing its
    DOT text, the timeline the report's cost; else `name` itself."""
    if name == "timeline.svg":
        return "report.md"
    if name.startswith(DAG_PREFIX) and name.endswith(".svg"):
        return name.removesuffix(".svg") + ".dot"
    return name


def artifact_groups(names: list[str]) -> list[list[int]]:
    """Indices of a spec's jobs (`spec_jobs` order), grouped so that artifacts made from one
    computation are rendered in one process."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(made_with(name), []).append(index)
    return list(groups.values())


# Graphviz's layout of a full drawing per node, on RELATIVE_COST's scale (bench: 7,050 nodes,
# 11 s; dag.json of 86,582 nodes, 0.6 s): drawn only for a DAG of FULL_SVG_MAX_NODES or fewer.
LAYOUT_COST = 400.0


def group_cost(names: list[str], group: list[int], nodes: int | None = None) -> float:
    """How long the artifacts `names[i]` for i in `group` take together (RELATIVE_COST's scale);
    with `nodes`, the DAG's, for it: a full drawing of a small DAG costs its Graphviz layout."""
    return sum(_relative_cost(names[index], nodes) for index in group) * (nodes or 1)


def _relative_cost(name: str, nodes: int | None) -> float:
    for suffix in sorted(RELATIVE_COST, key=len, reverse=True):
        if name.endswith(suffix):
            if suffix == ".svg" and nodes is not None and nodes <= FULL_SVG_MAX_NODES:
                return LAYOUT_COST
            return RELATIVE_COST[suffix]
    return 0.1
