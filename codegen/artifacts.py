"""Every artifact `par build` writes for a spec, in order: (file name, renderer)."""

from __future__ import annotations

from .cost import render_report, render_timeline
from .json_dag import emit_json
from .pytorch import emit_model

RENDERERS = [
    ("dag.json", lambda compiled: emit_json(compiled.graph)),
    ("model.py", emit_model),
    ("report.md", render_report),
    ("timeline.svg", render_timeline),
]
