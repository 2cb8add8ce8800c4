"""Cost model and report: per-device memory, FLOPs and communication, pipeline bubble, step time.

Everything is read from the DAG (docs/cost.md). Entry points: `cost_of(graph, hardware=...)`
(`spec_cost(compiled)` on the spec's own hardware), `per_rank_comm(graph, scope=...)`, and the
renderers of report.md and timeline.svg, which take a `Cost`.
"""

from __future__ import annotations

from par.codegen.cost.render import render_report, render_timeline, spec_cost
from par.dsl.cost.accounting import per_rank_comm, rank_costs, transfers
from par.dsl.cost.model import Cost, cost_of

__all__ = ["Cost", "cost_of", "per_rank_comm", "rank_costs", "render_report", "render_timeline", "spec_cost", "transfers"]
