"""The cost analysis over the DAG: per-rank accounting, the pipeline schedule and the step estimate.

Entry points: `cost_of(graph, hardware=...)` (`spec_cost(compiled)` on the spec's own hardware)
and `per_rank_comm(graph, scope=...)`; docs/cost.md has every formula. The report and the
timeline that show a `Cost` are emitters (par.codegen.cost).
"""

from par.dsl.cost.accounting import per_rank_comm, rank_costs, transfers
from par.dsl.cost.model import Cost, cost_of, spec_cost

__all__ = ["Cost", "cost_of", "per_rank_comm", "rank_costs", "spec_cost", "transfers"]
