"""Every artifact `par build` writes for a spec, in order: (file name, renderer)."""

from __future__ import annotations

from .cost import render_report, render_timeline
from .dot import emit_compact_dot, emit_dot
from .json_dag import emit_json
from .pytorch import emit_model
from .svg import FULL_SVG_MAX_NODES, svg_renderer

RENDERERS = [
    ("dag.json", lambda compiled: emit_json(compiled.graph)),
    ("dag.dot", emit_dot),
    ("dag.compact.dot", emit_compact_dot),
    ("dag.svg", svg_renderer(emit_dot, file="dag.svg", max_nodes=FULL_SVG_MAX_NODES)),
    ("dag.compact.svg", svg_renderer(emit_compact_dot, file="dag.compact.svg")),
    ("model.py", emit_model),
    ("report.md", render_report),
    ("timeline.svg", render_timeline),
]
