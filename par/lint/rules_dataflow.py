"""DAG009: the shapes that flow along edges."""

from __future__ import annotations

import re

from par.lint.findings import Finding
from par.lint.labels import Shape
from par.lint.view import DagView

_FUSED_QKV = re.compile(r"(?<![a-z])qkv(?![a-z])", re.IGNORECASE)
_NAMES_SLICE = re.compile(r"slice|(?<![a-z])r\s*(?:to|->|→)\s*s(?![a-z])", re.IGNORECASE)


def check_dims(view: DagView) -> list[Finding]:
    """DAG009: a node's stated Input: shape is produced by none of the nodes feeding it.

    A producer agrees when its Output: has the same dims (or, for numeric dims, the same
    number of elements: a reshape; symbolic dims match any size); when the consumer is a
    computation that takes a local slice of it (see `_slices`); or when all producers together
    make up the input (a concat, or a collective's input written as the whole tensor). One
    finding per consumer.
    """
    findings = []
    for node_id, info in view.info.items():
        wanted = info.dims.inputs if info.dims else ()
        produced_by = [(pred, dims.outputs) for pred in view.preds[node_id]
                       if (dims := view.info[pred].dims) and dims.outputs]
        producers = [pred for pred, _ in produced_by]
        if not wanted or not producers:
            continue
        outputs = [produced for _, produced in produced_by]
        if any(_feeds(produced, wanted, _slices(view, pred, node_id),
                      _FUSED_QKV.search(view.info[pred].title) is not None)
               for pred, produced in produced_by) or _together(outputs, wanted):
            continue
        given = "; ".join(f"`{pred}` gives {_shapes(shapes)}" for pred, shapes in produced_by[:4])
        more = f"; … and {len(producers) - 4} more" if len(producers) > 4 else ""
        findings.append(view.finding(
            "DAG009", view.edge_line[producers[0], node_id],
            f"`{node_id}` takes {_shapes(wanted)} but no producer gives it: {given}{more}",
            [node_id]))
    return findings


def _slices(view: DagView, producer: str, consumer: str) -> bool:
    """Whether the consumer may take a slice of what the producer gives (R -> S): a computation
    reading its part of a tensor that is not itself a computation's result (the input, a split,
    a collective's result), or of one held on more GPUs than the consumer runs on, or a node
    that says it slices ("Slice (R to S)"). Between two computations on the same GPUs sizes
    that merely divide are a mismatch, not a slice."""
    made, used = view.info[producer], view.info[consumer]
    if used.kind == "comm":
        return False
    if made.kind != "compute" or _NAMES_SLICE.search(used.title):
        return True
    return used.single_device is not None and (
        made.all_devices or (made.devices is not None and len(made.devices) > 1))


def _feeds(produced: tuple[Shape, ...], wanted: tuple[Shape, ...], slicing: bool,
           fused_qkv: bool) -> bool:
    for out in produced:
        for inp in wanted:
            if out.agrees_with(inp):
                return True
            if slicing and out.numel and inp.numel and out.numel % inp.numel == 0:
                return True
            if fused_qkv and _one_third(out, inp):
                return True
    return False


def _one_third(out: Shape, inp: Shape) -> bool:
    """A fused QKV projection's output is Q, K and V side by side: one dim three times wider."""
    if len(out.dims) != len(inp.dims):
        return False
    differ = [(mine, theirs) for (_, mine), (_, theirs) in zip(out.dims, inp.dims, strict=False)
              if mine != theirs]
    return len(differ) == 1 and all(differ[0]) and int(differ[0][0]) == 3 * int(differ[0][1])


def _together(outputs: list[tuple[Shape, ...]], wanted: tuple[Shape, ...]) -> bool:
    if len(outputs) < 2 or any(produced[0].numel is None for produced in outputs):
        return False
    total = sum(produced[0].numel or 0 for produced in outputs)  # none is None, as checked
    return any(inp.numel == total for inp in wanted)


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return " or ".join(dict.fromkeys(shape.text for shape in shapes))
