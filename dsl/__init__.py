"""The compiler core: front end -> checks -> lowering -> DAG (expanded, validated), and the cost analysis over it."""
