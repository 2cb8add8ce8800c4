"""The rules `par lint` applies, each with a stable code, and the findings they produce.

Every rule reports errors: a finding fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    """A lint rule: its code, name and what it finds."""

    code: str
    name: str
    summary: str


RULES: dict[str, Rule] = {rule.code: rule for rule in (
    Rule("DOT000", "unreadable", "the file cannot be read as DOT"),
    Rule("DAG001", "cycle", "the graph has a cycle"),
    Rule("DAG002", "no-input", "a node has no incoming edge and is not the graph's input"),
    Rule("DAG003", "no-output", "a node has no outgoing edge and is not the graph's output"),
    Rule("DAG004", "isolated", "a node has no edges at all"),
    Rule("DAG005", "comm-dangling", "a communication node is missing its input or its output"),
    Rule("DAG006", "undefined-node", "an edge names a node that is never declared"),
    Rule("DAG007", "layer-gap", "the layer numbering skips layers"),
    Rule("DAG008", "tp-no-collective",
         "outputs computed on different GPUs meet in one computation with no collective between"),
    Rule("DAG009", "dims-mismatch", "an edge joins an Output: shape to a different Input: shape"),
    Rule("DAG010", "stray-node",
         "a bare statement named like an attribute value (`filled`) declares a node"),
    Rule("DAG011", "tp-without-collective",
         "the DAG shows tensor parallelism but has no AllReduce, AllGather or ReduceScatter"),
    Rule("DAG012", "allreduce-widens",
         "an AllReduce whose output is wider than its input (an AllGather drawn as an AllReduce)"),
    Rule("DAG013", "allreduce-replicated", "an AllReduce of a tensor every GPU already holds"),
    Rule("DAG014", "transfer-to-self", "a Send/Recv from a GPU to the same GPU"),
    Rule("DAG015", "residual-one-input", "a residual add with one input"),
    Rule("DAG016", "experts-not-fed", "experts that receive only the router's edges, no tokens"),
    Rule("DAG017", "stage-no-transfer",
         "consecutive pipeline stages on different GPUs joined with no Send/Recv"),
    Rule("DAG018", "stage-gpus-unused", "a stage labelled with N GPUs whose nodes use fewer"),
    Rule("DAG019", "unfilled-template", "a label holds a template placeholder never filled in"),
    Rule("DAG020", "experts-merged-locally",
         "experts on different GPUs whose outputs meet with no All-to-All (or other collective)"),
    Rule("DAG021", "ring-not-closed", "the transfers of keys and values between GPUs do not close a ring"),
    Rule("DAG022", "ring-send-to-self", "a ring step passes keys and values to the GPU that holds them"),
    Rule("DAG023", "kv-never-reaches", "a GPU of a ring receives no block of keys and values"),
    Rule("SPEC001", "spec-layer-missing", "a layer of the spec's DAG has no node in the DOT file"),
    Rule("SPEC002", "spec-collective-missing",
         "a collective of the spec's DAG is missing from the DOT file's layer, or a pipeline "
         "boundary's Send/Recv"),
    Rule("SPEC003", "spec-collective-extra",
         "the DOT file's layer has a collective the spec's DAG does not, or a Send/Recv where "
         "the spec has no pipeline boundary"),
    Rule("SPEC004", "spec-layer-extra", "the DOT file has a layer the spec's DAG does not"),
    Rule("SPEC005", "spec-tp-mismatch",
         "the DOT file states a tensor-parallel degree the spec's DAG does not have"),
)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem lint found, where it is and the nodes it is about."""

    code: str
    file: str
    line: int
    message: str
    nodes: tuple[str, ...] = ()
    col: int = 0  # 0: the line is enough (column only for syntax errors)
    graph: str = ""

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    def sort_key(self) -> tuple:
        return (self.file, self.line, self.col, self.code, self.nodes, self.message)


def node_list(nodes, *, limit: int = 6) -> str:
    """`a`, `b`, `c` … and 13 more — every name up to `limit`."""
    names = [f"`{node}`" for node in nodes]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" … and {len(names) - limit} more"


