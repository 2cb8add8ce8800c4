"""`par lint` on the command line, with and without --spec."""

import json
from pathlib import Path

from lint_dags import bypass_collectives, render_dot

from par.cli import main
from par.dsl.compiler import compile_file

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "megatron_tp8_pp2.par"
SMALL = ["layers=2", "hidden=64", "heads=4", "ffn=256", "seq=8", "batch=4", "tp=2", "pp=2", "microbatches=2"]


def test_lint_a_drawing_of_the_spec_against_the_spec(tmp_path, capsys):
    compiled = compile_file(SPEC, SMALL)
    dot = tmp_path / "drawn.dot"
    dot.write_text(render_dot(compiled.graph))
    args = ["lint", str(dot), "--spec", str(SPEC)] + [f"-D{d}" for d in SMALL]
    assert main(args) == 0, capsys.readouterr().out
    # The same drawing without its AllReduces: the spec comparison names what is missing.
    allreduces = [node for node, data in compiled.graph.nodes(data=True)
                  if data["op"] == "allreduce"]
    broken = bypass_collectives(compiled.graph, allreduces)
    broken.remove_nodes_from(allreduces)
    dot.write_text(render_dot(broken))
    capsys.readouterr()
    assert main(args + ["--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "SPEC002" in json.dumps(report)


def test_usage_errors(tmp_path, capsys):
    assert main(["lint", str(tmp_path / "missing.dot")]) == 2
    dot = tmp_path / "a.dot"
    dot.write_text("digraph { a -> b }\n")
    assert main(["lint", str(dot), "-D", "tp=2"]) == 2
    assert "-D applies to --spec" in capsys.readouterr().err


def test_folders_stand_for_their_dot_and_gv_files(tmp_path, capsys):
    (tmp_path / "a.gv").write_text("digraph { x -> y }\n")
    (tmp_path / "b.dot").write_text("digraph { x -> y -> x }\n")
    (tmp_path / "notes.txt").write_text("digraph { x -> y -> x }\n")
    assert main(["lint", str(tmp_path), "--format", "json"]) == 1
    files = [entry["file"] for entry in json.loads(capsys.readouterr().out)["files"]]
    assert files == [str(tmp_path / "a.gv"), str(tmp_path / "b.dot")]
    (tmp_path / "empty").mkdir()
    assert main(["lint", str(tmp_path / "empty")]) == 2
    assert "no .dot or .gv files in this folder" in capsys.readouterr().err
