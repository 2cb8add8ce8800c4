"""Escaping: no text a spec can carry breaks the DOT syntax, and Graphviz shows it as written."""

import xml.etree.ElementTree as ET

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from par.codegen.dot.text import (
    REPLACEMENT,
    _unsafe,
    dims,
    gpus,
    html,
    layer_count,
    layer_span,
    printable,
    quoted,
    quoted_lines,
)

HOSTILE = [
    'we"ird',
    "back\\slash",
    "trailing\\",
    '\\"',
    "{braces} [brackets] |pipes| <angles>",
    "]",  # Graphviz drops a text item of nothing but ']'
    "]]",
    "&amp; &lt; &#39; ]]> <!-- -->",
    "line\nbreak\ttab\r",
    "\x00\x01\x1f\x7f",
    "naïve café ünïcødé ✓ 数据 😀",
    "\ufffe\uffff\ud800",
    "\\N \\G \\L \\l \\n",
    "digraph { a -> b }; // not a comment",
]
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


def test_quoted_escapes_quotes_backslashes_and_ampersands():
    assert quoted('a"b') == '"a\\"b"'
    assert quoted("a\\") == '"a\\\\\\\\"'
    assert quoted("a&b") == '"a&amp;b"'
    assert quoted_lines(["one", 'two"']) == '"one\\ntwo\\""'


def test_html_escapes_markup():
    assert html("<B>&'\"") == "&lt;B&gt;&amp;&#39;&quot;"


def test_printable_replaces_what_xml_cannot_carry():
    assert printable("a\x00b\nc\ud800d\ufffe") == "a" + REPLACEMENT + "b" + REPLACEMENT + "c" + REPLACEMENT + "d" + REPLACEMENT
    assert printable("é 😀 数据") == "é 😀 数据"
    # one pattern scans the text: it replaces exactly the characters the rule calls unsafe
    codes = [*range(0x10000), *(plane << 16 | low for plane in range(1, 17) for low in (0, 0xFFFD, 0xFFFE, 0xFFFF))]
    for code in codes:
        char = chr(code)
        assert printable(f"a{char}b") == "a" + (REPLACEMENT if _unsafe(char) else char) + "b", hex(code)


def test_dims_and_gpu_lists():
    assert dims((32, 10000, 4096)) == "[32, 10000, 4096]"
    assert gpus([3]) == "GPU 3"
    assert gpus([0, 1, 2, 3, 16, 17]) == "GPUs 0-3, 16-17"


def test_layer_counts_and_spans():
    assert (layer_count(1), layer_count(8)) == ("1 layer", "8 layers")
    assert (layer_span(3, 3), layer_span(0, 7)) == ("layer 3", "layers 0-7")


def _drawn(dot_run, texts):
    """Draws one node per text (label, tooltip and id from the text); returns the SVG's nodes."""
    lines = ["digraph {"]
    for index, text in enumerate(texts):
        lines.append(f"  {quoted(f'n{index} ' + text)} [label=<{html(text)}<BR/>{html(text)}>, tooltip={quoted_lines([text, text])}];")
    lines.append("}")
    done = dot_run("\n".join(lines) + "\n", "-Tsvg")
    assert done.returncode == 0, done.stderr.decode()
    assert not done.stderr, done.stderr.decode()
    root = ET.fromstring(done.stdout)
    return [group for group in root.iter(f"{SVG}g") if group.get("class") == "node"]


def _shown(text: str) -> str:
    """What Graphviz shows for a text line: XML-safe, whitespace runs as single spaces."""
    return " ".join(printable(text).split())


def _check(dot_run, texts):
    nodes = _drawn(dot_run, texts)
    assert len(nodes) == len(texts)  # no text merged two nodes or split one
    for node, text in zip(nodes, texts, strict=True):
        lines = [" ".join((element.text or "").split()) for element in node.iter(f"{SVG}text")]
        assert [line for line in lines if line] == [_shown(text)] * 2 if _shown(text) else True
        link = next(node.iter(f"{SVG}a"))
        assert " ".join(link.get(f"{XLINK}title").split()) == " ".join(f"{printable(text)} {printable(text)}".split())


def test_hostile_text_is_shown_as_written(dot_run):
    _check(dot_run, HOSTILE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=8))
def test_any_text_is_shown_as_written(dot_run, texts):
    _check(dot_run, texts)
