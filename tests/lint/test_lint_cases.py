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
    "agg_rect.dot": {("DAG020", "agg")},
    "agg_shape.dot": {("DAG020", "agg")},
    # the same merge straight into the output (no computation after it)
    "experts_to_output.dot": {("DAG020", "agg")},
    # experts tensor-parallel over GPUs 0-1 and 2-3: their own AllReduce moves no token between them
    "experts_tp_groups.dot": {("DAG020", "sum")},
    # dispatched by All-to-All but each GPU's weighted sum takes every GPU's experts: one
    # finding for both sums, none at the output, where each GPU's own result arrives
    "experts_weighted_per_gpu.dot": {("DAG020", "w0"), ("DAG020", "w1")},
    # dispatched and combined by All-to-All, aggregated per GPU with its shared expert
    "experts_combined.dot": set(),
    # `[T0, 4096]` after `[tokens_per_expert, 4096]`: symbolic sizes, no evidence of a mismatch
    "symdims.dot": set(),
    # MLP Up takes [..,4096] from MLP Gate's [..,16384]: two computations, not a local slice
    "slice.dot": {("DAG009", "up")},
    "slice2.dot": {("DAG009", "b"), ("DAG009", "c")},
    # a gate's [4,16,2] output (written after an arrow, same or next line) feeds a residual add;
    # each of those adds has that one input only (DAG015)
    "arrow.dot": {("DAG009", "r"), ("DAG009", "r2"), ("DAG009", "r3"),
                  ("DAG015", "r"), ("DAG015", "r2"), ("DAG015", "r3")},
    "arrow2.dot": {("DAG009", "r"), ("DAG015", "r")},
    # `Layers 1-6 (Same structure)` stands for layers 1 to 6, whatever the node's id
    "placeholder.dot": set(),
    "placeholder_noid.dot": set(),
    # an isolated `Output Projection` is an isolated computation, not the graph's output
    "outproj.dot": {("DAG004", "out_proj1")},
    # an All-Reduce whose output is twice as wide as its input concatenates: an AllGather
    "allreduce_widens.dot": {("DAG012", "ar")},
    # reducing an AllReduce's result, or a tensor labelled replicated, adds up the replicas
    "allreduce_replicated.dot": {("DAG013", "ar2"), ("DAG013", "ar3")},
    # "GPU 3 → GPU 3" is no transfer; "GPU 3 → GPU 4" is
    "send_to_self.dot": {("DAG014", "send")},
    # the first residual add has only the attention branch; the second has both inputs
    "residual_one_input.dot": {("DAG015", "res1")},
    # the router's dashed edges tell the experts which tokens to take, but no tokens arrive
    "experts_control_only.dot": {("DAG016", "e0"), ("DAG016", "e1")},
    # stage 0 -> 1 crosses GPUs with a plain edge; 1 -> 2 goes through a Send/Recv
    "stage_no_transfer.dot": {("DAG017", "l0"), ("DAG017", "l1")},
    # "Stage 0: 8 GPUs" uses GPUs 0-3; "Stage 1: GPUs 8-11" uses all four of its GPUs
    "stage_gpus_unused.dot": {("DAG018", "a")},
    # `{7+attention_pool_gpus}` and `{seq_len}` were never filled in; a record label is not one
    "unfilled_template.dot": {("DAG019", "pool"), ("DAG019", "output")},
    # ring attention over 3 GPUs drawn with two transfers: 0 -> 1 -> 2 stops at GPU 2 (DAG021),
    # and GPU 0 never gets the others' keys and values (DAG023)
    "ring_open.dot": {("DAG021", "q1"), ("DAG023", "q0")},
    # GPU 1's send goes to a recv on GPU 1 (DAG022): so GPU 0 gets nothing back and the ring of
    # the one good transfer (0 -> 1) stops at GPU 1
    "ring_self.dot": {("DAG022", "send1"), ("DAG021", "send0"), ("DAG023", "send0")},
}


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_reviewers_verdict(name):
    findings = lint_file(str(CASES / name)).findings
    # a finding may name several nodes: one defect repeated (`r2`, `r3`) is one finding
    assert {(finding.code, node) for finding in findings for node in finding.nodes} == \
        VERDICTS[name]


def test_every_case_has_a_verdict():
    assert {path.name for path in CASES.glob("*.dot")} == set(VERDICTS)
