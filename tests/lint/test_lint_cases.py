"""Minimal cases reduced from real deployment DAGs (tests/lint/cases/), each with what a careful
reviewer says about it: the findings lint must give, and no others."""

from __future__ import annotations

from pathlib import Path

import pytest

from par.lint import lint_file

CASES = Path(__file__).parent / "cases"

# file -> the (rule, node) pairs a reviewer reports
VERDICTS = {
    # experts on GPU 0 and GPU 1 merged with no All-to-All, whatever shape the merge is drawn in
    "agg_rect.dot": {("DAG008", "res")},
    "agg_shape.dot": {("DAG008", "res")},
    # `[T0, 4096]` after `[tokens_per_expert, 4096]`: symbolic sizes, no evidence of a mismatch
    "symdims.dot": set(),
    # MLP Up takes [..,4096] from MLP Gate's [..,16384]: two computations, not a local slice
    "slice.dot": {("DAG009", "up")},
    "slice2.dot": {("DAG009", "b"), ("DAG009", "c")},
    # a gate's [4,16,2] output (written after an arrow, same or next line) feeds a residual add
    "arrow.dot": {("DAG009", "r"), ("DAG009", "r2"), ("DAG009", "r3")},
    "arrow2.dot": {("DAG009", "r")},
    # `Layers 1-6 (Same structure)` stands for layers 1 to 6, whatever the node's id
    "placeholder.dot": set(),
    "placeholder_noid.dot": set(),
    # an isolated `Output Projection` is an isolated computation, not the graph's output
    "outproj.dot": {("DAG004", "out_proj1")},
}


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_reviewers_verdict(name):
    findings = lint_file(str(CASES / name)).findings
    assert {(finding.code, finding.nodes[0]) for finding in findings} == VERDICTS[name]


def test_every_case_has_a_verdict():
    assert {path.name for path in CASES.glob("*.dot")} == set(VERDICTS)
