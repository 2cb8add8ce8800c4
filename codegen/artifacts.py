"""Every artifact `par build` writes for a spec, in order: (file name, renderer)."""

from __future__ import annotations

from .cost import render_report, render_timeline
from .json_dag import emit_json

RENDERERS = [
    ("dag.json", lambda compiled: emit_json(compiled.graph)),
    ("report.md", render_report),
    ("timeline.svg", render_timeline),
]
