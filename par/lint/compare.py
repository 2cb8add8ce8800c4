"""Compare a DOT DAG with the DAG `par` compiles from a spec (SPEC001-SPEC004).

The spec's DAG follows the README's DAG contract: collectives are nodes with `kind == "comm"`, an
`op` (allgather, allreduce, reducescatter, alltoall, send, recv) and a `layer` (None for the
pipeline's send/recv). The DOT file's collectives are its communication nodes; one collective
drawn once per GPU (`l3_allreduce_gpu0` … `l3_allreduce_gpu7`) counts once.
"""

from __future__ import annotations

from par.dsl.dag.types import Dag
from par.dsl.dag.validate import COMMUNICATION
from par.dsl.registry.collectives import COLLECTIVES
from par.dsl.units import ranges
from par.lint.classify import COLLECTIVE_TITLES
from par.lint.findings import Finding, node_list
from par.lint.labels import op_key
from par.lint.view import DagView

PIPELINE = None  # the "layer" of send/recv between stages


def compare_with_spec(view: DagView, spec_dag: Dag, *, spec_name: str | None = None) -> list[Finding]:
    spec = f"spec `{spec_name}`" if spec_name else "the spec"
    spec_layers = {layer for _, data in spec_dag.nodes(data=True) if (layer := data["layer"]) is not None}
    dot_layers = _dot_layers(view)
    findings = []
    missing = sorted(spec_layers - dot_layers)
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        findings.append(view.finding(
            "SPEC001", view.graph.line,
            f"{_layers(missing)} of {spec} {verb} no node in this DAG (it shows "
            f"{_layers(dot_layers)})"))
    extra = sorted(dot_layers - spec_layers)
    if extra:
        verb = "is" if len(extra) == 1 else "are"
        findings.append(view.finding(
            "SPEC004", _first_line(view, extra[0]),
            f"{_layers(extra)} {verb} not in {spec} (it has {_layers(spec_layers)})"))
    findings.extend(_compare_collectives(view, spec_dag, spec, spec_layers & dot_layers))
    return findings


def _compare_collectives(view: DagView, spec_dag: Dag, spec: str, layers: set[int]) -> list[Finding]:
    expected = _spec_collectives(spec_dag)
    drawn = _dot_collectives(view)
    findings = []
    for layer, kind in sorted(set(expected) | set(drawn), key=_order):
        if layer is not PIPELINE and layer not in layers:
            continue  # a missing layer is reported once, by SPEC001
        want, have = expected.get((layer, kind), []), drawn.get((layer, kind), [])
        matched = {node for node in want if node in view.info}
        unmatched_want = [node for node in want if node not in matched]
        instances = _instances([node for node in have if node not in matched])
        where = "between pipeline stages" if layer is PIPELINE else f"layer {layer}"
        title = COLLECTIVE_TITLES[kind]
        gap = len(unmatched_want) - len(instances)
        if gap > 0:
            findings.append(view.finding(
                "SPEC002", _first_line(view, layer),
                f"{where}: {gap} {title} missing ({spec} has {len(want)}, this DAG "
                f"{len(want) - gap}); expected {node_list(unmatched_want, limit=4)}"))
        elif gap < 0:
            extra = [node for nodes in instances[gap:] for node in nodes]
            findings.append(view.finding(
                "SPEC003", view.info[extra[0]].line,
                f"{where}: {-gap} {title} more than {spec} has ({len(want)}): "
                f"{node_list(extra, limit=4)}", extra))
    return findings


def _layers(layers) -> str:
    if not layers:
        return "no layers"
    return f"layer{'s' if len(layers) > 1 else ''} {ranges(layers)}"


def _spec_collectives(spec_dag: Dag) -> dict[tuple, list[str]]:
    found: dict[tuple, list[str]] = {}
    for node, data in spec_dag.nodes(data=True):
        if data.get("kind") == "comm" and data.get("op") in COMMUNICATION:
            kind = COLLECTIVES[data["op"]].lint_as or data["op"]  # as a drawing of it reads
            found.setdefault((data.get("layer"), kind), []).append(str(node))
    return {key: sorted(nodes) for key, nodes in found.items()}


def _dot_collectives(view: DagView) -> dict[tuple, list[str]]:
    found: dict[tuple, list[str]] = {}
    for node, info in view.info.items():
        if info.kind == "comm" and info.collective in COMMUNICATION:
            found.setdefault((info.layer, info.collective), []).append(node)
    return found


def _instances(nodes: list[str]) -> list[list[str]]:
    """Collective instances, in file order: per-GPU copies of one collective count once."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(op_key(node), []).append(node)
    return list(groups.values())


def _dot_layers(view: DagView) -> set[int]:
    return {layer for info in view.info.values() for layer in info.layers}


def _first_line(view: DagView, layer) -> int:
    lines = [info.line for info in view.info.values() if info.layer == layer and layer is not None]
    return min(lines, default=view.graph.line)


def _order(key: tuple) -> tuple:
    layer, kind = key
    return (layer is PIPELINE, layer if layer is not None else 0, kind)

