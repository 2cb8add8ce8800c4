"""The cost analysis over the DAG: per-rank accounting, the pipeline schedule and the step estimate."""
