"""The DAG: a Program expanded per device (networkx.DiGraph), then validated."""
