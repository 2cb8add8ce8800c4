"""DAG009: the shapes that flow along edges."""

from __future__ import annotations

from par.lint.findings import Finding
from par.lint.labels import Shape
from par.lint.view import DagView


def check_dims(view: DagView) -> list[Finding]:
    """DAG009: a node's stated Input: shape is produced by none of the nodes feeding it.

    A producer agrees when its Output: has the same dims (or, for numeric dims, the same
    number of elements: a reshape); when the consumer is a computation that takes a slice of it
    (R -> S: a local slice); or when all producers together make up the input (a concat, or a
    collective's input written as the whole tensor). One finding per consumer.
    """
    findings = []
    for node_id, info in view.info.items():
        wanted = info.dims.inputs if info.dims else ()
        produced_by = [(pred, dims.outputs) for pred in view.preds[node_id]
                       if (dims := view.info[pred].dims) and dims.outputs]
        producers = [pred for pred, _ in produced_by]
        if not wanted or not producers:
            continue
        slicing = info.kind != "comm"
        outputs = [shapes for _, shapes in produced_by]
        if any(_feeds(produced, wanted, slicing) for produced in outputs) or \
                _together(outputs, wanted):
            continue
        given = "; ".join(f"`{pred}` gives {_shapes(shapes)}" for pred, shapes in produced_by[:4])
        more = f"; … and {len(producers) - 4} more" if len(producers) > 4 else ""
        findings.append(view.finding(
            "DAG009", view.edge_line[producers[0], node_id],
            f"`{node_id}` takes {_shapes(wanted)} but no producer gives it: {given}{more}",
            [node_id]))
    return findings


def _feeds(produced: tuple[Shape, ...], wanted: tuple[Shape, ...], slicing: bool) -> bool:
    for out in produced:
        for inp in wanted:
            if out.agrees_with(inp):
                return True
            if slicing and out.numel and inp.numel and out.numel % inp.numel == 0:
                return True
    return False


def _together(outputs: list[tuple[Shape, ...]], wanted: tuple[Shape, ...]) -> bool:
    if len(outputs) < 2 or any(produced[0].numel is None for produced in outputs):
        return False
    total = sum(produced[0].numel or 0 for produced in outputs)  # none is None, as checked
    return any(inp.numel == total for inp in wanted)


def _shapes(shapes: tuple[Shape, ...]) -> str:
    return " or ".join(dict.fromkeys(shape.text for shape in shapes))
