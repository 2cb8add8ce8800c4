"""dag.dot and dag.compact.dot: the view-model of a drawing and its DOT text."""
