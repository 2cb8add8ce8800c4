"""`par lint` on real DOT files written by generator scripts.

Snapshots (tests/lint/snapshots/) hold reviewed findings for the samples in tests/lint/corpus/;
`python tests/lint/regen_snapshots.py` rewrites them. Graphviz itself, where installed, is the
oracle for what the reader must see in each file; the full corpus (shared/corpus/dags, found
next to the repository or through $PAR_CORPUS) must read without a crash.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from lint_snapshots import full_corpus, lint_sample, samples, snapshot_path

from par.lint import run_lint
from par.lint.dot_reader import DotReadError, read_dot_file


@pytest.mark.parametrize("sample", samples(), ids=lambda path: path.name[:40])
def test_snapshot(sample):
    expected = snapshot_path(sample).read_text(encoding="utf-8")
    assert lint_sample(sample) == expected


def test_the_reviewed_snapshots_cover_the_rules():
    codes = {match.group(0) for sample in samples()
             for match in re.finditer(r"\b(DOT|DAG)\d{3}\b",
                                      snapshot_path(sample).read_text(encoding="utf-8"))}
    assert {"DOT000", "DAG001", "DAG002", "DAG003", "DAG004", "DAG005", "DAG006", "DAG007",
            "DAG008", "DAG009", "DAG010", "DAG011"} <= codes


def _graphviz_view(path: Path):
    """Node ids and edges as Graphviz reads them (`dot -Tjson0`), or None if it rejects the file."""
    done = subprocess.run(["dot", "-Tjson0", str(path)], capture_output=True, timeout=60)
    if done.returncode != 0:
        return None
    data = json.loads(done.stdout)
    objects = data.get("objects", [])
    names = {obj["_gvid"]: obj["name"] for obj in objects if "nodes" not in obj
             and "subgraphs" not in obj and "edges" not in obj}
    edges = Counter((names[e["tail"]], names[e["head"]]) for e in data.get("edges", []))
    return set(names.values()), edges


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
@pytest.mark.parametrize("sample", samples(), ids=lambda path: path.name[:40])
def test_reader_sees_what_graphviz_sees(sample):
    expected = _graphviz_view(sample)
    if expected is None:
        with pytest.raises(DotReadError):
            read_dot_file(str(sample))
        return
    (graph,) = read_dot_file(str(sample))
    assert set(graph.nodes) == expected[0]
    assert Counter((edge.src, edge.dst) for edge in graph.edges) == expected[1]


def test_whole_corpus_reads_without_a_crash():
    corpus = full_corpus()
    if corpus is None:
        pytest.skip("the shared corpus is not next to this checkout; set PAR_CORPUS")
    files = sorted(corpus.glob("*.dot"))
    assert files
    text, code = run_lint([str(corpus)], fmt="json")
    assert code == 1
    report = json.loads(text)
    assert [entry["file"] for entry in report["files"]] == [str(path) for path in files]
    unreadable = sorted(Path(entry["file"]).name for entry in report["files"]
                        if any(f["code"] == "DOT000" for f in entry["findings"]))
    # exactly the files Graphviz rejects too (checked with `dot -Tcanon`)
    assert unreadable == [
        "lr__dag_analysis.dot",
        "outputs__2025-10-17-10-32-58__baseline_hybrid.dot",
        "outputs__2025-10-29-14-21-46__palm_540b_attention_device_0.dot",
        "web__generated_docs__PP__layerwise_deployment_final.dot",
    ]
