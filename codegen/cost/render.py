"""report.md and timeline.svg of a deployment's cost, from the view-models and their templates."""

from __future__ import annotations

from par.codegen.cost.report import sections, summary, warnings
from par.codegen.cost.timeline import timeline_view
from par.codegen.templating import render
from par.dsl.cost.model import Cost
from par.dsl.dag.types import graph_attrs
from par.dsl.escape import html_comment, markdown

RULES = {"l": "---", "r": "---:"}  # a markdown table's rule per column alignment


def report_view(cost: Cost) -> dict:
    return {
        "name": markdown(cost.name),
        "source": html_comment(graph_attrs(cost.graph)["source"]),
        "summary": summary(cost),
        "warnings": warnings(cost),
        "sections": [
            {
                "title": section.title,
                "headers": section.headers,
                "rules": [RULES[align] for align in section.align],
                "rows": [[cell.replace("|", "\\|") for cell in row] for row in section.rows],
                "notes": section.notes,
            }
            for section in sections(cost)
        ],
    }


def render_report(cost: Cost) -> str:
    return render("report.md.jinja", **report_view(cost))


def render_timeline(cost: Cost) -> str:
    return render("timeline.svg.jinja", **timeline_view(cost))
