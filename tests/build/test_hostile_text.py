"""Spec file names, spec comments and DOT ids written to be hostile come out inert in every target:
a Python comment in model.py, an HTML comment and Markdown in report.md, XML in timeline.svg, DOT,
`par lint --format md` and the terminal."""

import io
import re
import tokenize
import xml.etree.ElementTree as ET

import pytest

from par.codegen.artifacts import renderers
from par.dsl.compiler import compile_file
from par.dsl.diagnostics import CompileError, format_all
from par.dsl.frontend.inputs import read_spec
from par.lint import run_lint
from tests.build.conftest import GOLDEN_SPECS

ESC, BEL = "\x1b", "\x07"
# A file name that tries every target: a new line with a statement, the end of an HTML comment,
# raw HTML, a code span's end, DOT and Python quotes, and terminal escape sequences (CSI and OSC).
HOSTILE = f"x\nimport os; os.system('PWNED') #--><script>alert(1)<script>`|\"'{ESC}[31m{ESC}]0;title{BEL}\u202e"


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{HOSTILE}.par").write_text((GOLDEN_SPECS / "single_gpu.par").read_text())
    compiled = compile_file(f"{HOSTILE}.par")
    wanted = ("dag.dot", "dag.compact.dot", "model.py", "report.md", "timeline.svg")
    return {name: renderer(compiled) for name, renderer in renderers() if name in wanted}


def test_model_py_keeps_the_file_name_inside_its_first_comment(built):
    source = built["model.py"]
    compile(source, "model.py", "exec")
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    assert tokens[0].type == tokenize.COMMENT and "PWNED" in tokens[0].string
    assert all("PWNED" not in token.string for token in tokens[1:])
    assert ESC not in source and "\u202e" not in source


def test_report_md_banner_is_one_html_comment_and_no_html_reaches_the_markdown(built):
    report = built["report.md"]
    first, second = report.splitlines()[:2]
    assert first.startswith("<!-- ") and first.endswith(" -->") and first.count("--") == 2
    assert second.startswith("# Cost report: ")
    assert not re.search(r"<[A-Za-z/!?]", report.split("\n", 1)[1])  # after the comment: no HTML
    assert ESC not in report and BEL not in report


def test_timeline_svg_is_well_formed_xml(built):
    root = ET.fromstring(built["timeline.svg"])
    assert ESC not in "".join(root.itertext())


def test_dot_files_read_back_without_errors_and_hold_no_control_character(built, tmp_path):
    for name in ("dag.dot", "dag.compact.dot"):
        text = built[name]
        lines = text.splitlines()
        assert lines[0].startswith("// ") and lines[1].startswith("digraph ")
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)
        (tmp_path / name).write_text(text)
        report, _ = run_lint([str(tmp_path / name)], fmt="json")
        assert "DOT000" not in report


def _outside_code_spans(text: str) -> str:
    """`text` without its CommonMark code spans: a run of n backticks (not backslash-escaped) up to
    the next run of exactly n; a run with no such end is literal text."""
    kept, position = [], 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            kept.append(text[position : position + 2])
            position += 2
            continue
        if char != "`":
            kept.append(char)
            position += 1
            continue
        run = re.match(r"`+", text[position:]).group(0)
        closing = re.compile(rf"(?<!`){run}(?!`)").search(text, position + len(run))
        if closing is None:
            kept.append(run)
            position += len(run)
        else:
            position = closing.end()
    return "".join(kept)


def test_lint_markdown_keeps_hostile_node_ids_in_code_spans_and_table_cells(tmp_path):
    ids = ["a`b<script>alert(1)</script>", "``", "c|d", "e\nf", f"g{ESC}[2J", "<img src=x onerror=alert(1)>"]
    body = "".join(f'  "{node.replace(chr(10), chr(92) + "n")}";\n' for node in ids)
    (tmp_path / "h.dot").write_text(f"digraph g {{\n{body}}}\n")
    markdown, code = run_lint([str(tmp_path / "h.dot")], fmt="md")
    assert code == 1
    outside = _outside_code_spans(markdown)
    assert not re.search(r"<[A-Za-z/!?]", outside) and ESC not in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| line")]
    assert rows and all(len(re.findall(r"(?<!\\)\|", row)) == 5 for row in rows if not row.startswith("| ---"))
    text, _ = run_lint([str(tmp_path / "h.dot")], fmt="text")
    assert ESC not in text


def test_diagnostics_show_escape_sequences_in_spec_text_as_visible_characters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"spec{ESC}]0;title{BEL}.par"
    comment = f"# {ESC}[2J{ESC}]8;;http://x{BEL}link{ESC}]8;;{BEL}\u202e"
    (tmp_path / name).write_text(
        f"model bad : gpt {{ layers 2  hidden 63  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }}  {comment}\n"
    )
    with pytest.raises(CompileError) as failed:
        compile_file(name)
    printed = format_all(failed.value.diagnostics, {name: read_spec(name)})
    assert "hidden 63" in printed and "\u241b" in printed
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", printed)


def test_a_stray_escape_character_is_shown_and_pointed_at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.par").write_text(f"model m : gpt {{ layers 2 {ESC}[2J hidden 64 }}\n")
    with pytest.raises(CompileError) as failed:
        compile_file("s.par")
    printed = format_all(failed.value.diagnostics, {"s.par": read_spec("s.par")})
    assert ESC not in printed
    lines = printed.splitlines()
    quoted, caret = lines[1], lines[2]
    assert quoted[caret.index("^")] == "\u241b"


def test_the_command_line_echoes_hostile_paths_without_escape_sequences(tmp_path, monkeypatch, par):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"s{ESC}]0;title{BEL}.par").write_text((GOLDEN_SPECS / "single_gpu.par").read_text())
    checked = par("check", ".")
    assert checked[0] == 0 and "ok" in checked[1]
    missing = par("check", f"missing{ESC}[2J.par")
    assert missing[0] == 2 and "no such file" in missing[2]
    stale = par("build", ".", "-o", "out", "--check")
    printed = "".join(checked[1:] + missing[1:] + stale[1:])
    assert "\u241b" in printed and ESC not in printed and BEL not in printed


def test_explain_quotes_a_spec_line_without_its_escape_sequences(tmp_path, monkeypatch, par):
    monkeypatch.chdir(tmp_path)
    text = (GOLDEN_SPECS / "single_gpu.par").read_text()
    (tmp_path / "s.par").write_text(text.replace("\nmesh", f"  # {ESC}[2J{ESC}]0;title{BEL}\nmesh", 1))
    code, out, _ = par("explain", "s.par", "input")
    assert code == 0 and "\u241b[2J" in out and ESC not in out and BEL not in out


def test_cost_comparison_heads_columns_with_spec_names_without_escape_sequences(tmp_path, monkeypatch, par):
    monkeypatch.chdir(tmp_path)
    for name in (f"a{ESC}[2J.par", "b.par"):
        (tmp_path / name).write_text((GOLDEN_SPECS / "single_gpu.par").read_text())
    code, out, _ = par("cost", f"a{ESC}[2J.par", "b.par")
    assert code == 0 and "a\u241b[2J" in out and ESC not in out
