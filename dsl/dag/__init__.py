"""The DAG: a Program expanded per device (types.Dag, laid out as a networkx DiGraph), then validated."""
