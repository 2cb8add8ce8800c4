"""par: a declarative language and compiler for parallel deployments of transformer models."""

__version__ = "0.1.0"
