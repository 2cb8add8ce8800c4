"""Text for DOT files: escaping of spec text, and the dims and GPU lists of labels.

Also the one-line summaries of the model and the mesh, which the cost report shares (worded
for each: see `model_line` and `mesh_line`).

Every string that reaches a `.dot` file from the spec (names, file paths, reasons) goes
through `quoted` (a DOT quoted string: ids, tooltips) or `html` (text inside an HTML-like
label); nothing a spec can contain breaks the DOT syntax or the SVG made from it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

from par.dsl.dag.types import GraphAttrs
from par.dsl.units import plural, ranges

REPLACEMENT = "\ufffd"


def printable(text: str) -> str:
    """`text` with every character XML cannot carry (controls, surrogates, U+FFFE/U+FFFF) replaced."""
    return "".join(REPLACEMENT if _unsafe(char) else char for char in text)


def _unsafe(char: str) -> bool:
    code = ord(char)
    if unicodedata.category(char) in ("Cc", "Cs"):
        return True
    return (code & 0xFFFE) == 0xFFFE or 0xFDD0 <= code <= 0xFDEF


def quoted(text: str) -> str:
    """A DOT quoted string that Graphviz shows (in tooltips and SVG titles) as `text`.

    Graphviz writes `&name;` through to SVG unescaped, so `&` itself is written `&amp;`; and it
    expands `\\N`, `\\G`, `\\L` and drops unknown escapes in these strings after reading
    `\\\\` as one backslash, so a backslash is written as four.
    """
    body = printable(text).replace("&", "&amp;").replace("\\", "\\\\\\\\").replace('"', '\\"')
    return f'"{body}"'


def quoted_lines(lines: Iterable[str]) -> str:
    """A DOT quoted escString whose lines (joined by `\\n`) show as the given lines."""
    return '"' + "\\n".join(quoted(line)[1:-1] for line in lines) + '"'


def html(text: str) -> str:
    """`text` as character data of an HTML-like label (where Graphviz expands `\\N`, `\\G`, ...)."""
    escaped = printable(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = escaped.replace('"', "&quot;").replace("'", "&#39;")
    if escaped and not escaped.strip("]"):  # Graphviz drops a text item of nothing but ']'
        escaped = escaped.replace("]", "&#93;")
    return escaped


def dims(shape: Sequence[int]) -> str:
    """`[32, 10000, 4096]`."""
    return "[" + ", ".join(str(size) for size in shape) + "]"


def gpus(devices: Sequence[int]) -> str:
    """`GPU 3` or `GPUs 0-7`."""
    return f"GPU {devices[0]}" if len(devices) == 1 else f"GPUs {ranges(devices)}"


def layer_span(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def layer_count(count: int) -> str:
    """`1 layer`, `8 layers`."""
    return f"{count} layer{'s' if count != 1 else ''}"


def model_line(graph_data: GraphAttrs, *, drawing: bool) -> str:
    """The DAG's model in one line, as the cost report words it:
    `model: gpt2 (gpt block), 2 layers, hidden 4096, heads 32 (kv 32), ffn 16384, fp16`.

    A drawing writes `model gpt2 (gpt block): 2 layers, ...` and names the kv heads only where
    they differ from the heads: `heads 8 (2 kv)`.
    """
    model = graph_data["model"]
    named = f"{model['name']} ({model['block']} block)"
    if drawing:
        head = f"model {named}:"
        kv = f" ({model['kv_heads']} kv)" if model["kv_heads"] != model["heads"] else ""
    else:
        head, kv = f"model: {named},", f" (kv {model['kv_heads']})"
    return f"{head} {model['layers']} layers, hidden {model['hidden']}, heads {model['heads']}{kv}, ffn {model['ffn']}, {model['dtype']}"


def mesh_line(graph_data: GraphAttrs, *, drawing: bool) -> str:
    """The DAG's mesh and pipeline in one line, as the cost report words it:
    `mesh: tp 2 x pp 2 x dp 1 = 4 devices; 4 microbatches of [32, 10000, 4096] per step, 1f1b schedule`.

    A drawing writes `mesh: tp 2 × pp 2 × dp 1 = 4 GPUs, 4 microbatches (1f1b)` and gives the
    microbatch's shape a line of its own.
    """
    mesh = graph_data["mesh"]
    times, device = (" × ", "GPU") if drawing else (" x ", "device")
    grid = times.join(f"{axis} {mesh[axis]}" for axis in ("tp", "pp", "dp"))
    microbatches = plural(mesh["microbatches"], "microbatch", "microbatches")
    if drawing:
        run = f", {microbatches} ({mesh['schedule']})"
    else:
        shape = list(graph_data["microbatch_shape"])
        run = f"; {microbatches} of {shape} per step, {mesh['schedule']} schedule"
    parallel = ", sequence parallel" if mesh["sequence_parallel"] else ""
    return f"mesh: {grid} = {plural(mesh['world'], device)}{run}{parallel}"
