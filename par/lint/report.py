"""Findings as text lines, a Markdown review, or JSON. Pure functions of the lint results."""

from __future__ import annotations

import json
from collections import Counter

from par.dsl.escape import markdown_cell, markdown_code, terminal
from par.dsl.units import plural, ranges
from par.lint.classify import NodeInfo
from par.lint.findings import RULES, Finding
from par.lint.lint import FileResult
from par.lint.view import DagView


def format_text(results: list[FileResult]) -> str:
    lines = [terminal(_text_line(finding)) for result in results for finding in result.findings]
    lines.append(_summary(results))
    return "\n".join(lines) + "\n"


def _text_line(finding: Finding) -> str:
    if finding.col:  # a syntax error: the compiler's file:line:col form
        return (f"{finding.file}:{finding.line}:{finding.col}: error: {finding.code}: "
                f"{finding.message}")
    return f"{finding.file}:{finding.line}: {finding.code}: {finding.message}"


def _summary(results: list[FileResult]) -> str:
    findings = sum(len(result.findings) for result in results)
    dirty = sum(bool(result.findings) for result in results)
    return (f"par lint: {_count(len(results), 'file')} checked, "
            f"{_count(findings, 'finding')} ({_count(findings, 'error')}) "
            f"in {_count(dirty, 'file')}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --- Markdown ----------------------------------------------------------------------------

def format_markdown(results: list[FileResult]) -> str:
    summary = _summary(results).removeprefix("par lint: ")
    parts = ["# DAG review (`par lint`)", "", summary[0].upper() + summary[1:] + ".", ""]
    for result in results:
        parts.extend(_markdown_file(result))
    return "\n".join(parts).rstrip("\n") + "\n"


def _markdown_file(result: FileResult) -> list[str]:
    head = f"## {markdown_code(result.file)} — {_count(len(result.findings), 'finding')}"
    lines = [head, ""]
    for view in result.views:
        lines.extend([_graph_summary(view), ""])
    if not result.findings:
        lines.extend(["No findings.", ""])
    by_code: dict[str, list[tuple[Finding, DagView | None]]] = {}
    for finding, where in result.located():
        by_code.setdefault(finding.code, []).append((finding, where))
    for code in sorted(by_code):
        lines.extend(_markdown_rule(code, by_code[code]))
    return lines


def _graph_summary(view: DagView) -> str:
    kinds = Counter(info.kind for info in view.info.values())
    words = {"compute": "computation", "comm": "communication", "route": "routing",
             "io": "input/output"}
    counts = ", ".join(f"{kinds[kind]} {words[kind]}" for kind in words if kinds[kind])
    devices = sorted({device for info in view.info.values() if not info.all_devices
                      for device in info.devices or ()})
    layers = sorted({layer for info in view.info.values() for layer in info.layers})
    name = markdown_code(view.graph.name) if view.graph.name else "(unnamed)"
    text = f"Graph {name}: {plural(len(view.info), 'node')} ({counts}), {plural(len(view.edge_line), 'edge')}"
    if devices:
        text += f"; {'GPU' if len(devices) == 1 else 'GPUs'} {ranges(devices)}"
    if layers:
        text += f"; layers {ranges(layers)}"
    return text + "."


def _markdown_rule(code: str, located: list[tuple[Finding, DagView | None]]) -> list[str]:
    rule = RULES[code]
    nodes = {node for finding, _ in located for node in finding.nodes}
    count = (f"{_count(len(nodes), 'node')} requiring modification" if nodes
             else _count(len(located), "finding"))
    summary = rule.summary[0].upper() + rule.summary[1:]
    lines = [f"### {code} {rule.name} — {count}", "", f"{summary}.", ""]
    lines.extend(["| line | nodes | finding | classified as |", "| --- | --- | --- | --- |"])
    for finding, view in located:
        cells = [str(finding.line), ", ".join(markdown_code(node) for node in finding.nodes),
                 finding.message, _classification(finding, view)]
        lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + " |")
    lines.append("")
    return lines


def _classification(finding: Finding, view: DagView | None) -> str:
    info = _info(view, finding.nodes[0]) if finding.nodes else None
    if info is None:
        return ""
    text = f"{info.kind}: {info.kind_why}"
    if info.layer is not None:
        text += f"; layer {info.layer} ({info.layer_why})"
    if info.devices is not None:
        text += f"; {_devices_text(info)} ({info.devices_why})"
    return text


def _info(view: DagView | None, node: str) -> NodeInfo | None:
    return view.info.get(node) if view is not None else None


def _devices_text(info: NodeInfo) -> str:
    if info.all_devices:
        return "all GPUs"
    return f"GPU {ranges(info.devices or ())}"


# --- JSON --------------------------------------------------------------------------------

def format_json(results: list[FileResult]) -> str:
    files = [_json_file(result) for result in results]
    findings = sum(len(result.findings) for result in results)
    summary = {"files": len(results), "findings": findings, "errors": findings}
    return json.dumps({"files": files, "summary": summary}, indent=2, ensure_ascii=False) + "\n"


def _json_file(result: FileResult) -> dict:
    return {
        "file": result.file,
        "graphs": [{"name": view.graph.name, "nodes": len(view.info), "edges": len(view.edge_line)}
                   for view in result.views],
        "findings": [_json_finding(finding, view) for finding, view in result.located()],
    }


def _json_finding(finding: Finding, view: DagView | None) -> dict:
    return {
        "code": finding.code, "rule": finding.rule.name, "severity": "error",
        "line": finding.line, "col": finding.col or None, "message": finding.message,
        "graph": finding.graph,
        "nodes": [_json_node(node, _info(view, node)) for node in finding.nodes],
    }


def _json_node(node: str, info: NodeInfo | None) -> dict:
    if info is None:
        return {"id": node}
    devices = None if info.devices is None else (
        "all" if info.all_devices else sorted(info.devices))
    return {
        "id": node, "kind": info.kind, "kind_why": info.kind_why, "collective": info.collective,
        "role": info.role, "devices": devices, "devices_why": info.devices_why,
        "layer": info.layer, "layer_why": info.layer_why, "line": info.line,
    }
