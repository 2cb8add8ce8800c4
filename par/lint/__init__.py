"""`par lint`: review Graphviz DOT deployment DAGs written by other tools.

The CLI calls `run_lint`; everything else here is the machinery behind it:
`dot_syntax` (lark grammar -> syntax tree), `dot_reader` (-> nodes, edges, subgraphs),
`classify` (kind, devices, layer, dims of each node), `view` (the edges as drawn, the shards),
`rules`/`rules_parallel`/`rules_dataflow` (the checks),
`compare` (against the DAG `par` compiles from a spec) and `report` (text, Markdown, JSON).
"""

from __future__ import annotations

import os

from par.dsl.frontend.inputs import collect_files
from par.lint.findings import RULES, Finding, Rule
from par.lint.lint import FileResult, lint_file
from par.lint.report import format_json, format_markdown, format_text

__all__ = ["DOT_SUFFIXES", "RULES", "Finding", "FileResult", "Rule", "lint_file", "run_lint"]

_FORMATS = {"text": format_text, "md": format_markdown, "json": format_json}
DOT_SUFFIXES = (".dot", ".gv")  # the files a folder stands for


def run_lint(paths: list[str], *, fmt: str = "text", spec_dag=None,
             spec_name: str | None = None) -> tuple[str, int]:
    """Lint DOT files (a directory stands for the .dot/.gv files below it, sorted).

    A file that cannot be read is a DOT000 finding; a folder without DOT files is a
    `par.dsl.frontend.inputs.UsageError`. Returns the whole report in `fmt` ("text", "md" or "json") and
    the exit code:
    1 when any error was found, else 0. `spec_dag` is the networkx DiGraph `par` compiles
    from a spec (the README's DAG contract); with it every file is also compared against it.
    It may be a function of the file's path instead (a serving spec: the phase the file draws).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(_FORMATS)}")
    results = [lint_file(path, spec_dag=spec_dag(path) if callable(spec_dag) else spec_dag, spec_name=spec_name)
               for path in _expand(paths)]
    failed = any(result.findings for result in results)
    return _FORMATS[fmt](results), int(failed)


def _expand(paths: list[str]) -> list[str]:
    """Folders as `collect_files` expands them; anything else as given (so that a missing
    file is reported as a finding)."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(str(found) for found in collect_files([path], suffixes=DOT_SUFFIXES))
        else:
            files.append(path)
    return files
