"""The three output forms and the exit code of `run_lint`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lint_dags import bypass_collectives, contract_dag, render_dot

from par.lint import RULES, run_lint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reviewer_case(tmp_path_factory):
    dag = contract_dag(layers=16, tp=8, pp=2)
    allgathers = sorted(node for node in dag if "_allgather_" in node)
    path = tmp_path_factory.mktemp("reviewer") / "reviewer.dot"
    path.write_text(render_dot(bypass_collectives(dag, allgathers)), encoding="utf-8")
    return str(path), allgathers


@pytest.fixture
def clean(tmp_path):
    path = tmp_path / "clean.dot"
    path.write_text(render_dot(contract_dag(layers=2, tp=2, pp=1)), encoding="utf-8")
    return str(path)


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.dot"
    path.write_text("digraph {\n  a -> b;\n  c [label=\"x\"] ]\n}\n", encoding="utf-8")
    return str(path)


def test_text_lines_and_exit_codes(reviewer_case, clean, broken):
    path, allgathers = reviewer_case
    text, code = run_lint([path])
    lines = text.splitlines()
    assert code == 1 and len(lines) == 33
    assert all(re.fullmatch(rf"{re.escape(path)}:\d+: DAG005: communication node `\w+` "
                            r"\(AllGather\) has no input and no output edge \(.*\)", line)
               for line in lines[:-1])
    assert lines[-1] == "par lint: 1 file checked, 32 findings (32 errors) in 1 file"
    assert run_lint([clean]) == ("par lint: 1 file checked, 0 findings (0 errors) in 0 files\n", 0)
    text, code = run_lint([broken])
    assert code == 1
    assert text.splitlines()[0].startswith(f"{broken}:3:17: error: DOT000: unexpected ']'; "
                                           "expected ';', '[', '{', '}', a name")


def test_markdown_review_lists_every_offending_node(reviewer_case, clean):
    path, allgathers = reviewer_case
    text, code = run_lint([path, clean], fmt="md")
    assert code == 1
    assert f"## `{path}` — 32 findings" in text and f"## `{clean}` — 0 findings" in text
    assert "### DAG005 comm-dangling — 32 nodes requiring modification" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`layer_" in line]
    assert sorted(re.search(r"`(layer_\w+)`", row).group(1) for row in rows) == allgathers
    assert all("comm: id/label names AllGather; layer" in row for row in rows)
    assert "No findings." in text


def test_json_report(reviewer_case, broken):
    path, allgathers = reviewer_case
    report = json.loads(run_lint([path, broken], fmt="json")[0])
    assert report["summary"] == {"files": 2, "findings": 33, "errors": 33}
    first, second = report["files"]
    assert first["graphs"][0]["name"] == "deployment"
    assert sorted(f["nodes"][0]["id"] for f in first["findings"]) == allgathers
    node = first["findings"][0]["nodes"][0]
    assert (node["kind"], node["collective"], node["devices"]) == ("comm", "allgather",
                                                                  list(range(8)))
    assert node["layer_why"].startswith("id ")
    assert second["findings"][0]["code"] == "DOT000" and second["findings"][0]["col"] == 17


def test_directories_expand_to_their_dot_files_sorted(tmp_path, clean):
    folder = tmp_path / "dags"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.dot", "sub/a.gv", "notes.txt"):
        (folder / name).write_text("digraph { x -> y }", encoding="utf-8")
    text, code = run_lint([str(folder)], fmt="json")
    assert [entry["file"] for entry in json.loads(text)["files"]] == [
        str(folder / "b.dot"), str(folder / "sub" / "a.gv")]
    assert code == 0


def test_output_does_not_depend_on_hash_order(tmp_path):
    dag = contract_dag(layers=4, tp=4, pp=2)
    path = tmp_path / "d.dot"
    path.write_text(render_dot(bypass_collectives(dag, [n for n in dag if "_allgather_" in n])),
                    encoding="utf-8")
    script = f"from par.lint import run_lint; print(run_lint([{str(path)!r}], fmt='md')[0], end='')"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=REPO, check=True)
    assert other.stdout == run_lint([str(path)], fmt="md")[0]


def test_unknown_format_is_refused(clean):
    with pytest.raises(ValueError, match="unknown format"):
        run_lint([clean], fmt="html")


def test_rule_codes_are_stable():
    assert sorted(RULES) == ["DAG001", "DAG002", "DAG003", "DAG004", "DAG005", "DAG006",
                             "DAG007", "DAG008", "DAG009", "DAG010", "DAG011", "DAG012", "DAG013",
                             "DAG014", "DAG015", "DAG016", "DAG017", "DAG018", "DAG019", "DAG020",
                             "DAG021", "DAG022", "DAG023", "DOT000",
                             "SPEC001", "SPEC002", "SPEC003", "SPEC004", "SPEC005"]


def test_nodes_are_described_from_their_own_graph(tmp_path):
    # Two graphs in one file share the id `y`: A's finding must show A's node, not B's.
    path = tmp_path / "two.dot"
    path.write_text('digraph A {\n  x [label="Linear"]; y [label="AllGather"]; z [label="Add"];\n  x -> y; x -> z;\n}\n'
                    'digraph B {\n  a [label="LayerNorm"]; b [label="GELU"];\n  a -> y -> b;\n'
                    '  y [label="Linear"]\n}\n', encoding="utf-8")
    (finding,) = json.loads(run_lint([str(path)], fmt="json")[0])["files"][0]["findings"]
    assert (finding["code"], finding["graph"]) == ("DAG005", "A")
    (node,) = finding["nodes"]
    assert (node["id"], node["kind"], node["collective"], node["line"]) == ("y", "comm",
                                                                            "allgather", 2)
    rows = [line for line in run_lint([str(path)], fmt="md")[0].splitlines()
            if line.startswith("| 2 |")]
    assert len(rows) == 1 and rows[0].endswith("| comm: id/label names AllGather |")


def test_graph_summary_counts_the_layers_a_range_covers(tmp_path):
    path = tmp_path / "ranges.dot"
    path.write_text('digraph { input -> l0 -> mid -> l9 -> output; l0 [label="Layer 0"]; '
                    'mid [label="Layers 1-8"]; l9 [label="Layer 9"]; }', encoding="utf-8")
    summary = next(line for line in run_lint([str(path)], fmt="md")[0].splitlines()
                   if line.startswith("Graph "))
    assert summary.endswith("; layers 0-9.")
