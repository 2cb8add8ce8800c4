"""report.md and timeline.svg: the cost analysis (par.dsl.cost) shown as a report and a picture."""

from par.codegen.cost.render import render_report, render_timeline

__all__ = ["render_report", "render_timeline"]
