"""The view-model of timeline.svg: one row per stage, one box per forward or backward pass."""

from __future__ import annotations

import math
from html import escape  # as xml.sax.saxutils's with quote=False; that module costs 30 ms to import

from par.codegen.cost.report import time_format
from par.dsl import units
from par.dsl.cost.model import Cost
from par.dsl.escape import one_line

LEFT, RIGHT, TOP, ROW, GAP, AXIS = 84, 24, 48, 34, 10, 44
PLOT_WIDTH = 960
COLORS = {"F": ("#7fb3e6", "#1f4e79"), "B": ("#f2a766", "#7a3b08")}  # fill, stroke
# Interleaved: the fill of each of a stage's model chunks after the first (chunk 0 keeps
# COLORS'), a shade of its own, cycling after the third, so that a row shows which chunk each pass runs.
CHUNK_FILLS = {"F": ("#4f8fcf", "#2d6aa8", "#a8cdf0"), "B": ("#e07f2e", "#b85f14", "#f7c9a1")}
LABEL_MIN_WIDTH = 14  # px: narrower boxes carry no label (their tooltip still does)


def _px(value: float) -> str:
    return f"{value:.2f}"


def nice_step(span: float, *, ticks: int = 8) -> float:
    """1, 2 or 5 times a power of ten, so that about `ticks` steps cover `span`."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)


def _row_y(stage: int) -> float:
    return TOP + stage * (ROW + GAP)


def _fill(phase: str, chunk: int) -> str:
    return COLORS[phase][0] if chunk == 0 else CHUNK_FILLS[phase][(chunk - 1) % len(CHUNK_FILLS[phase])]


def _box(slot, scale: float, at, stages: int, chunks: int) -> dict:
    x, width = LEFT + slot.start * scale, (slot.end - slot.start) * scale
    fill, stroke = _fill(slot.phase, slot.chunk), COLORS[slot.phase][1]
    pass_name = "forward" if slot.phase == "F" else "backward"
    where = f"stage {slot.stage}"
    if chunks > 1:
        where += f" chunk {slot.chunk} (model chunk {slot.chunk * stages + slot.stage})"
    return {
        "x": _px(x),
        "y": _px(_row_y(slot.stage)),
        "width": _px(width),
        "height": _px(ROW),
        "fill": fill,
        "stroke": stroke,
        "label": f"{slot.phase}{slot.microbatch}" if width >= LABEL_MIN_WIDTH else "",
        "label_x": _px(x + width / 2),
        "label_y": _px(_row_y(slot.stage) + ROW / 2 + 4),
        "title": escape(f"{where}, microbatch {slot.microbatch}, {pass_name}: {at(slot.start)} to {at(slot.end)}", quote=False),
    }


def _axis(span: float, scale: float, stages: int, at) -> dict:
    y = _row_y(stages)
    step = nice_step(span)
    ticks = [{"x": _px(LEFT + k * step * scale), "label": at(k * step) if k else "0"} for k in range(int(span / step + 1e-9) + 1)]
    return {"x1": LEFT, "x2": LEFT + PLOT_WIDTH, "y": _px(y), "tick_y": _px(y + 4), "label_y": _px(y + 16), "ticks": ticks}


def _legend(y: float, chunks: int) -> list[dict]:
    items = [("forward", *COLORS["F"]), ("backward", *COLORS["B"]), ("idle", "url(#idle)", "#999999")]
    if chunks > 1:  # interleaved: a shade per chunk of a stage
        items[:2] = [(f"{phase}, chunk {c}", _fill(phase, c), COLORS[phase][1]) for c in range(chunks) for phase in ("F", "B")]
    return [
        {"x": LEFT + 100 * i, "y": _px(y), "fill": fill, "stroke": stroke, "text_x": LEFT + 100 * i + 20, "text_y": _px(y + 9), "label": label}
        for i, (label, fill, stroke) in enumerate(items)
    ]


def timeline_view(cost: Cost) -> dict:
    estimate, mesh = cost.estimate, cost.mesh
    stages, chunks = mesh["pp"], mesh.get("chunks", 1)
    span = estimate.pipeline or 1.0
    scale = PLOT_WIDTH / span
    at = time_format(cost)
    axis_y = _row_y(stages)
    unit = f"seconds ({cost.hardware.name})" if cost.hardware else "FLOPs of the slowest device (no hardware given)"
    heading = (
        f"{cost.name}: {mesh['schedule']} schedule, {units.plural(stages, 'stage')}, "
        + (f"{chunks} chunks per stage, " if chunks > 1 else "")
        + f"{units.plural(mesh['microbatches'], 'microbatch', 'microbatches')}, "
        f"bubble {units.percent(estimate.bubble)} (idle / total)"
    )
    return {
        "width": LEFT + PLOT_WIDTH + RIGHT,
        "height": axis_y + AXIS + 28,
        "title": {"x": LEFT, "y": 24, "text": escape(one_line(heading), quote=False)},
        "rows": [
            {
                "label": f"stage {stage}",
                "label_x": LEFT - 8,
                "label_y": _px(_row_y(stage) + ROW / 2 + 4),
                "x": LEFT,
                "y": _px(_row_y(stage)),
                "width": PLOT_WIDTH,
                "height": ROW,
            }
            for stage in range(stages)
        ],
        "boxes": [_box(slot, scale, at, stages, chunks) for slot in estimate.slots],
        "axis": _axis(span, scale, stages, at),
        "caption": {"x": LEFT, "y": _px(axis_y + 34), "text": escape(f"time in {unit}; hatched: idle (the pipeline bubble)", quote=False)},
        "legend": _legend(axis_y + AXIS, chunks),
    }
