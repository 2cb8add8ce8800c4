"""par: a declarative language and compiler for parallel deployments of transformer models.

Three layers, each importing only the ones before it: `par.dsl` (the compiler core and the
analyses over the DAG) <- `par.codegen` (one emitter per artifact) <- `par` itself (the command
line, the build driver and `par lint`). docs/architecture.md has the map.
"""

__version__ = "0.1.0"
