"""The registry: one declaration per op (`ops`) and per collective (`collectives`).

Every stage of the core and every emitter reads what it knows about an op or a collective
from here; `statements` is the view a block statement needs (the ops and the collectives a
block may write, by name). docs/architecture.md walks through adding one.

The mixture-of-experts ops (`moe`) are declared beside their block form and join `OPS` when
the package loads, before any of its modules is used.
"""

from par.dsl.registry import moe as _moe  # noqa: F401  (registers its ops in OPS)
