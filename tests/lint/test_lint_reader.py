"""Reading DOT as it is written in the wild, and refusing what is not DOT with a position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from par.lint.dot_reader import DotReadError, read_dot_file, read_dot_text


def one(text: str):
    (graph,) = read_dot_text(text)
    return graph


def edges(graph) -> list[tuple[str, str]]:
    return [(edge.src, edge.dst) for edge in graph.edges]


def test_nodes_declared_in_nested_subgraphs_without_edges_are_kept():
    graph = one("""digraph {
        subgraph cluster_stage_0 {
            label="Stage 0";
            subgraph cluster_gpu0 { label="GPU 0"; a; }
            lonely [shape=ellipse];
        }
        a -> b;
    }""")
    assert list(graph.nodes) == ["a", "lonely", "b"]
    assert [sub.label for sub in graph.scope_of(graph.nodes["a"])] == ["Stage 0", "GPU 0"]
    assert graph.nodes["lonely"].line == 5
    assert graph.nodes["b"].declared is False and graph.nodes["a"].declared is True


def test_default_node_attributes_are_scoped_to_their_subgraph():
    graph = one("""digraph {
        node [shape=box];
        subgraph cluster_x { node [shape=ellipse, color=red]; inner; }
        outer;
        node [shape=diamond];
        late;
    }""")
    assert graph.nodes["inner"].attrs == {"shape": "ellipse", "color": "red"}
    assert graph.nodes["outer"].attrs == {"shape": "box"}
    assert graph.nodes["late"].attrs == {"shape": "diamond"}


def test_attribute_lists_in_any_order_and_form():
    graph = one('digraph { a [shape=box label="A"]; b [label="B", shape=box;][color=red]; '
                'a -> b [label=x, style=dashed] }')
    assert graph.nodes["a"].attrs == {"shape": "box", "label": "A"}
    assert graph.nodes["b"].attrs == {"label": "B", "shape": "box", "color": "red"}
    assert graph.edges[0].attrs == {"label": "x", "style": "dashed"}


def test_ids_quoted_unquoted_numeric_and_html():
    graph = one('digraph { "node one" -> n2 -> 3.5 -> -7; '
                'h [label=<<table><tr><td>Q<br/>K</td></tr></table>>]; '
                'j [label="a" + "b\\"c"]; }')
    assert list(graph.nodes) == ["node one", "n2", "3.5", "-7", "h", "j"]
    assert graph.nodes["h"].html_label
    assert graph.nodes["h"].attrs["label"] == "<table><tr><td>Q<br/>K</td></tr></table>"
    assert graph.nodes["j"].attrs["label"] == 'ab"c'


def test_multiline_labels_and_line_continuations():
    graph = one('digraph {\n  a [label="first\nsecond \\\nthird"];\n  b;\n}')
    assert graph.nodes["a"].attrs["label"] == "first\nsecond third"
    assert graph.nodes["b"].line == 5


def test_edge_chains_subgraph_operands_and_ports():
    graph = one("digraph { a:out:s -> b -> {c d} [color=red]; {e f} -> g:n; }")
    assert edges(graph) == [("a", "b"), ("b", "c"), ("b", "d"), ("e", "g"), ("f", "g")]
    assert all(edge.attrs == {"color": "red"} for edge in graph.edges[:3])


def test_comments_preprocessor_lines_and_keyword_case():
    graph = one("""// leading comment
    # preprocessor line
    DiGraph G { /* block
    comment */ NODE [shape=box]; nodes -> Edge2; // trailing
    }""")
    assert graph.name == "G"
    assert list(graph.nodes) == ["nodes", "Edge2"]
    assert graph.nodes["nodes"].attrs == {"shape": "box"}


def test_strict_undirected_and_several_graphs_in_one_file():
    graphs = read_dot_text("strict graph A { a -- b } digraph B { c -> d }")
    assert [(g.name, g.directed) for g in graphs] == [("A", False), ("B", True)]


def test_graph_attributes_and_cluster_labels():
    graph = one('digraph { graph [rankdir=LR]; label="top"; '
                'subgraph cluster_s { graph [label="GPU 3"]; x; } }')
    assert graph.attrs == {"rankdir": "LR", "label": "top"}
    assert graph.subgraphs[0].label == "GPU 3" and graph.subgraphs[0].name == "cluster_s"


@pytest.mark.parametrize("text, line, col, words", [
    ("digraph { a -> b; }\n'", 2, 1, "unexpected character"),
    ("'\ndigraph { a }", 1, 1, "unexpected character"),
    ('digraph {\n  a [label="open];\n}', 2, 12, "unterminated quoted string"),
    ("digraph {\n  a -> b;\n", 3, 1, "end of file"),
    ("\n    output [label=x];\n}", 2, 5, "at the start of the file"),
    ("digraph { a -- b }", 1, 13, "'--' in a digraph"),
    ("graph { a -> b }", 1, 11, "'->' in a graph"),
    ("digraph { a [label=<<b>x] }", 1, 20, "unterminated or unbalanced <html>"),
    ("digraph { a -> ; }", 1, 16, "expected"),
])
def test_broken_dot_is_an_error_with_line_and_column(text, line, col, words):
    with pytest.raises(DotReadError) as info:
        read_dot_text(text)
    assert (info.value.line, info.value.col) == (line, col)
    assert words in info.value.message


@pytest.mark.parametrize("data, words, line", [
    (b"", "empty file", 1),
    (b"  \n\t\n", "empty file", 1),
    (b"digraph {\n a\x00 }", "binary data", 2),
    (b"digraph {\n  a [label=\"\xff\"]\n}", "not UTF-8", 2),
    (bytes(range(256)) * 4, "binary data", 1),
])
def test_files_that_are_not_text(tmp_path, data, words, line):
    path = tmp_path / "bad.dot"
    path.write_bytes(data)
    with pytest.raises(DotReadError) as info:
        read_dot_file(str(path))
    assert words in info.value.message and info.value.line == line


def test_missing_file_and_byte_order_mark(tmp_path):
    with pytest.raises(DotReadError, match="cannot read file"):
        read_dot_file(str(tmp_path / "absent.dot"))
    path = tmp_path / "bom.dot"
    path.write_bytes("\ufeffdigraph { a -> b }".encode("utf-8"))
    assert edges(read_dot_file(str(path))[0]) == [("a", "b")]


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(DotReadError, match="nested too deeply"):
        read_dot_text("digraph {" + "{" * 3000 + "a" + "}" * 3000 + "}")


# --- round trip: any DAG, written in any of the ways the scripts write it, reads back -------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda name: name not in {"node", "edge", "graph", "digraph", "subgraph", "strict"})


def _quote(name: str, style: int) -> str:
    return f'"{name}"' if style % 2 else name


@st.composite
def written_dags(draw):
    names = draw(st.lists(_names, min_size=1, max_size=12, unique=True))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=20)) if pairs else []
    styles = draw(st.lists(st.integers(0, 7), min_size=len(names) + len(chosen),
                           max_size=len(names) + len(chosen)))
    return names, chosen, styles


def _write(names, chosen, styles) -> str:
    lines = ["digraph g {", "  // written by a script"]
    for index, name in enumerate(names):
        style = styles[index]
        attrs = f'[label="{name}\\nGPU: {index}", shape=box]' if style & 2 else \
            f"[shape=ellipse label=<<b>{name}</b>>]"
        if style & 4:
            lines.append(f"  subgraph cluster_{index} {{ {_quote(name, style)} {attrs} }}")
        else:
            lines.append(f"  {_quote(name, style)} {attrs};")
    for index, (src, dst) in enumerate(chosen):
        style = styles[len(names) + index]
        lines.append(f"  {_quote(src, style)} -> {_quote(dst, style + 1)}"
                     + (" /* c */ [style=dashed]" if style & 2 else ";"))
    lines.append("}")
    return "\n".join(lines)


@settings(max_examples=60, deadline=None)
@given(written_dags())
def test_round_trip_of_generated_dags(dag):
    names, chosen, styles = dag
    graph = one(_write(names, chosen, styles))
    assert list(graph.nodes) == names
    assert edges(graph) == chosen
    assert all(node.declared for node in graph.nodes.values())


# --- whatever the input, a finding or an error with a position, never a traceback ---------

_DOT_PIECES = st.sampled_from([
    "digraph", "graph", "strict", "subgraph", "node", "edge", "{", "}", "[", "]", ";", ",", "=",
    "->", "--", ":", "+", '"', "<", ">", "\n", " ", "label", '"GPU: 0-7"', '"AllReduce"', "a",
    "layer_0_allgather_qkv", "cluster_x", "shape=ellipse", "style=invis", "lhead=cluster_x",
    '"Input: [8, 16]\\nOutput: [8, 32]"', "/*", "*/", "//", "#", "\\", "-1.5", "é", "'",
])


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(_DOT_PIECES, max_size=60).map(" ".join), st.text(max_size=200)))
def test_any_text_reads_or_fails_with_a_position(text):
    from par.lint.lint import lint_graph

    try:
        graphs = read_dot_text(text)
    except DotReadError as error:
        assert error.line >= 1 and error.col >= 1 and error.message
        return
    for graph in graphs:
        lint_graph(graph)
