"""`par build --svg auto|full|none`: the full drawing is skipped above the node limit with a note
saying why and how to force it, `--svg full` forces it, `--svg none` renders (and checks) neither."""

import os
import stat

import pytest

from par.cli import main
from par.codegen import artifacts, svg
from par.dsl.compiler import compile_file

GRAPHVIZ = {"dag.svg", "dag.compact.svg"}


def logging_dot(folder):
    """A `dot` on PATH that draws a stand-in SVG and logs one line per call."""
    folder.mkdir()
    program = folder / "dot"
    program.write_text(f"#!/bin/sh\necho call >> {folder / 'calls'}\necho '<svg>stand-in</svg>'\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


def calls(folder) -> int:
    log = folder / "calls"
    return len(log.read_text().splitlines()) if log.exists() else 0


def build(par, specs, out, *extra):
    return par("build", specs / "gpt_tp2_pp2.par", "-o", out, *extra)


def test_a_dag_over_the_limit_is_drawn_folded_with_a_note_saying_why(specs, tmp_path, par, monkeypatch):
    bin_dir = logging_dot(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    nodes = compile_file(specs / "gpt_tp2_pp2.par").graph.number_of_nodes()
    assert nodes > 50
    monkeypatch.setattr(artifacts, "FULL_SVG_MAX_NODES", 50)
    out = tmp_path / "build"
    code, _, err = build(par, specs, out)
    assert code == 0, err
    assert {path.name for path in (out / "gpt_tp2_pp2").iterdir()} >= {"dag.dot", "dag.compact.svg"}
    assert not (out / "gpt_tp2_pp2" / "dag.svg").exists()
    (note,) = [line for line in err.splitlines() if "dag.svg not rendered" in line]
    assert note.startswith(f"par: note: gpt_tp2_pp2: dag.svg not rendered: the DAG has {nodes} nodes, more than 50")
    assert "layout would take minutes" in note and "`par build --svg full`" in note
    assert calls(bin_dir) == 1  # the compact view only

    code, _, err = build(par, specs, out, "--svg", "full")
    assert code == 0, err
    assert (out / "gpt_tp2_pp2" / "dag.svg").read_text() == "<svg>stand-in</svg>\n"
    assert "not rendered" not in err
    assert calls(bin_dir) == 3


def test_svg_none_renders_and_checks_no_drawing(specs, tmp_path, par, monkeypatch):
    bin_dir = logging_dot(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "build"
    code, _, err = build(par, specs, out, "--svg", "none")
    assert code == 0, err
    written = {path.name for path in (out / "gpt_tp2_pp2").iterdir()}
    assert not written & GRAPHVIZ and {"dag.dot", "dag.compact.dot", "dag.json", "model.py"} <= written
    assert calls(bin_dir) == 0
    code, listed, err = build(par, specs, out, "--svg", "none", "--check")
    assert code == 0 and listed == "", err  # the drawings it did not render are not called missing
    code, listed, _ = build(par, specs, out, "--check")
    assert code == 1 and "dag.svg: missing" in listed and "dag.compact.svg: missing" in listed


def test_the_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, meaning in svg.SVG_CHOICES.items():
        assert f"{name}: {meaning}" in text
    assert [name for name, _ in artifacts.renderers("none")] == [
        name for name, _ in artifacts.renderers("full") if name not in GRAPHVIZ
    ]
