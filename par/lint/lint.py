"""Lint one DOT file: read, classify, apply every rule, compare with a spec's DAG if given."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from par.lint.compare import compare_with_spec
from par.lint.dot_reader import DotGraph, DotReadError, read_dot_file
from par.lint.findings import Finding, node_list
from par.lint.labels import id_family
from par.lint.rules import (
    check_connections,
    check_cycles,
    check_layer_gaps,
    check_stray_nodes,
    check_undefined,
)
from par.lint.rules_dataflow import check_dims
from par.lint.rules_experts import check_expert_merges
from par.lint.rules_parallel import check_tensor_parallel
from par.lint.rules_ring import check_rings
from par.lint.rules_semantic import check_semantics
from par.lint.view import DagView, build_view

CHECKS = (check_cycles, check_connections, check_undefined, check_stray_nodes, check_layer_gaps,
          check_tensor_parallel, check_expert_merges, check_dims, check_semantics, check_rings)


@dataclass(slots=True)
class GraphResult:
    """One graph of a file and its findings: their nodes are this view's nodes."""

    view: DagView
    findings: list[Finding]


@dataclass(slots=True)
class FileResult:
    """What linting one file found: each graph's result, or why it could not be read."""

    file: str
    graphs: list[GraphResult] = field(default_factory=list)
    unreadable: Finding | None = None  # DOT000: the file could not be read

    @property
    def views(self) -> list[DagView]:
        return [graph.view for graph in self.graphs]

    @property
    def findings(self) -> list[Finding]:
        return [finding for finding, _ in self.located()]

    def located(self) -> list[tuple[Finding, DagView | None]]:
        """Every finding with the view its nodes belong to (None for DOT000), sorted."""
        pairs: list[tuple[Finding, DagView | None]] = [
            (finding, graph.view) for graph in self.graphs for finding in graph.findings
        ]
        if self.unreadable is not None:
            pairs.append((self.unreadable, None))
        return sorted(pairs, key=lambda pair: pair[0].sort_key())


# Rules whose findings on nodes of one family (ids equal but for their numbers) share a cause:
# the same op left unconnected, the same shape disagreement, or the same missing combine, on
# every GPU or layer.
GROUPED = frozenset({"DAG002", "DAG003", "DAG004", "DAG009", "DAG015", "DAG020"})


def group_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per defect: those of a GROUPED rule whose first nodes are of one family
    become the first of them, naming the others."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    order: list[Finding | tuple[str, str]] = []
    for finding in findings:
        if finding.code not in GROUPED or not finding.nodes:
            order.append(finding)
            continue
        key = (finding.code, id_family(finding.nodes[0]))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(finding)
    grouped = []
    for item in order:
        if isinstance(item, Finding):
            grouped.append(item)
            continue
        first, *others = groups[item]
        if others:
            nodes = [node for finding in groups[item] for node in finding.nodes]
            first = replace(first, nodes=tuple(nodes), message=(
                f"{first.message}; the same for "
                f"{node_list([finding.nodes[0] for finding in others])}"))
        grouped.append(first)
    return grouped


def lint_graph(graph: DotGraph, *, spec_dag=None,
               spec_name: str | None = None) -> tuple[DagView, list[Finding]]:
    view = build_view(graph)
    findings = group_findings([finding for check in CHECKS for finding in check(view)])
    if spec_dag is not None:
        findings.extend(compare_with_spec(view, spec_dag, spec_name=spec_name))
    return view, findings


def lint_file(path: str, *, spec_dag=None, spec_name: str | None = None) -> FileResult:
    result = FileResult(path)
    try:
        graphs = read_dot_file(path)
    except DotReadError as exc:
        result.unreadable = Finding("DOT000", path, exc.line, exc.message, col=exc.col)
        return result
    for graph in graphs:
        view, findings = lint_graph(graph, spec_dag=spec_dag, spec_name=spec_name)
        result.graphs.append(GraphResult(view, findings))
    return result
