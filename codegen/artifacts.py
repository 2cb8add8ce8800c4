"""Every artifact `par build` writes for a spec, in order: (file name, renderer)."""

from __future__ import annotations

from .json_dag import emit_json

RENDERERS = [
    ("dag.json", lambda compiled: emit_json(compiled.graph)),
]
