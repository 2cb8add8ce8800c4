"""Text for DOT files: escaping of spec text, and the dims and GPU lists of labels.

Every string that reaches a `.dot` file from the spec (names, file paths, reasons) goes
through `quoted` (a DOT quoted string: ids, tooltips) or `html` (text inside an HTML-like
label); nothing a spec can contain breaks the DOT syntax or the SVG made from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from par.dsl.units import ranges

REPLACEMENT = "\ufffd"
# A node's GPU column in the DOT views (its `group`): `column_<dp>[_<cp>]_<tp>`.
COLUMN = "column_"


# What XML cannot carry: the controls (Unicode category Cc), the surrogates (Cs) and the
# noncharacters (U+FDD0-U+FDEF, and the last two code points of every plane).
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)


def printable(text: str) -> str:
    """`text` with every character XML cannot carry (controls, surrogates, U+FFFE/U+FFFF) replaced."""
    if text.isascii() and text.isprintable():  # the common case, checked in C: no ASCII control
        return text
    return UNSAFE.sub(REPLACEMENT, text)


def quoted(text: str) -> str:
    """A DOT quoted string that Graphviz shows (in tooltips and SVG titles) as `text`.

    Graphviz writes `&name;` through to SVG unescaped, so `&` itself is written `&amp;`; and it
    expands `\\N`, `\\G`, `\\L` and drops unknown escapes in these strings after reading
    `\\\\` as one backslash, so a backslash is written as four.
    """
    if text.isidentifier():  # node ids: letters, digits and _, none of which is replaced or escaped
        return f'"{text}"'
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


