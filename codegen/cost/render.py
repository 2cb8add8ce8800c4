"""report.md and timeline.svg of a compiled spec, from the view-models and their templates."""

from __future__ import annotations

from ..templating import render
from .model import Cost, cost_of
from .report import sections, summary, warnings
from .timeline import timeline_view

_RULES = {"l": "---", "r": "---:"}


def report_view(cost: Cost) -> dict:
    return {
        "name": cost.name,
        "source": cost.graph.graph["source"],
        "summary": summary(cost),
        "warnings": warnings(cost),
        "sections": [
            {
                "title": section.title,
                "headers": section.headers,
                "rules": [_RULES[align] for align in section.align],
                "rows": [[cell.replace("|", "\\|") for cell in row] for row in section.rows],
                "notes": section.notes,
            }
            for section in sections(cost)
        ],
    }


def render_report(compiled) -> str:
    return render("report.md.jinja", **report_view(cost_of(compiled.graph, hardware=compiled.deployment.hardware)))


def render_timeline(compiled) -> str:
    return render("timeline.svg.jinja", **timeline_view(cost_of(compiled.graph, hardware=compiled.deployment.hardware)))
