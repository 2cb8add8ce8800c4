"""Rendering: every emitted .dot passes `dot` without a warning; dag.svg is made, skipped or refused."""

import struct

import pytest

from par.codegen import svg
from par.codegen.dot.emit import emit_compact_dot, emit_dot
from par.codegen.renderer import ArtifactError, Skip

GOLDEN = ["tests/golden/specs/gpt_tp2_pp2.par", "tests/golden/specs/llama_sp_dp2.par", "tests/golden/specs/single_gpu.par"]
SHIPPED = ["specs/baseline_tp8_pp2.par", "specs/layerwise.par", "specs/megatron_tp8_pp2.par", "specs/llama_gqa.par"]
CASES = (
    [(path, (), emit) for path in GOLDEN for emit in (emit_dot, emit_compact_dot)]
    + [(path, (), emit_compact_dot) for path in SHIPPED]
    + [(path, (), emit_dot) for path in SHIPPED[:3]]
    + [("specs/llama_gqa.par", ("layers=4",), emit_dot)]
)


@pytest.mark.slow  # Graphviz lays out every shipped spec
@pytest.mark.parametrize("path, defines, emit", CASES, ids=[f"{p.split('/')[-1]}{''.join(d)}-{e.__name__}" for p, d, e in CASES])
def test_every_emitted_dot_renders_without_warnings(compiled, dot_run, path, defines, emit):
    done = dot_run(emit(compiled(path, *defines)), "-Tsvg")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    assert done.stdout.rstrip().endswith(b"</svg>")


@pytest.mark.parametrize("emit", [emit_dot, emit_compact_dot])
def test_the_small_spec_renders_to_png(compiled, dot_run, tmp_path, emit):
    """2 layers, tp 2, pp 2: the picture of the design docs (docs/graphviz.md)."""
    done = dot_run(emit(compiled(GOLDEN[0])), "-Tpng")
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
    png = done.stdout
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert 800 < width < 4000 and 1000 < height < 6000, (width, height)
    (tmp_path / f"{emit.__name__}.png").write_bytes(png)


def test_svg_is_dots_drawing_and_the_same_every_time(compiled, dot_run):
    spec = compiled(GOLDEN[1])
    render = svg.svg_renderer(emit_dot, file="dag.svg")
    first, second = render(spec), render(spec)
    assert first == second == dot_run(emit_dot(spec), "-Tsvg").stdout


def test_without_dot_the_svg_is_skipped_with_one_notice(compiled, monkeypatch):
    monkeypatch.setattr(svg, "dot_program", lambda: None)
    spec = compiled(GOLDEN[0])
    answers = [svg.svg_renderer(emit, file=name)(spec) for emit, name in [(emit_dot, "dag.svg"), (emit_compact_dot, "dag.compact.svg")]]
    assert all(isinstance(answer, Skip) for answer in answers)
    assert len({answer.notice for answer in answers}) == 1
    assert "Graphviz" in answers[0].notice and "graphviz" in answers[0].notice


def test_a_dag_above_the_limit_is_not_drawn_in_full(compiled, dot_binary):
    spec = compiled(GOLDEN[0])
    nodes = spec.graph.number_of_nodes()
    answer = svg.svg_renderer(emit_dot, file="dag.svg", max_nodes=nodes - 1)(spec)
    assert isinstance(answer, Skip)
    assert f"{nodes:,} nodes" in answer.notice and spec.deployment.name in answer.notice
    assert isinstance(svg.svg_renderer(emit_dot, file="dag.svg", max_nodes=nodes)(spec), bytes)


def test_a_failing_dot_raises_one_line_of_its_message(dot_binary):
    """ArtifactError, which the build turns into a warning that skips the SVG (tests/build)."""
    with pytest.raises(ArtifactError, match="failed") as raised:
        svg.render_svg("digraph { a -> }\n", program=dot_binary)
    assert "syntax error" in str(raised.value) and "\n" not in str(raised.value)


def test_graphviz_messages_are_cut_to_the_error_line():
    dump = b"Warning: first\n\nError: trouble in init_rank\n" + b"\t%0 2\n" * 3000
    assert svg.first_error(dump) == "Error: trouble in init_rank (and 3,001 more lines from Graphviz)"
    assert svg.first_error(b"  lone line \x1b[31m\n") == "lone line \ufffd[31m"
    assert svg.first_error(b"") == "no message"
    assert len(svg.first_error(b"Error: " + b"x" * 5000)) == svg.MESSAGE_CHARS


def test_a_dot_that_hangs_is_stopped(tmp_path):
    slow = tmp_path / "dot"
    slow.write_text("#!/bin/sh\nsleep 10\n")
    slow.chmod(0o755)
    with pytest.raises(ArtifactError, match="did not finish"):
        svg.render_svg("digraph { a }\n", program=str(slow), timeout=0.2)


# Graphviz 2.43's ranking fails ("trouble in init_rank") on these drawings with GPU columns: a
# vocabulary over tp 4 in one stage (BLOOM's tp 4 has it on every stage).
RANKING_CASE = ("specs/megatron_tp8_pp2.par", ("tp=4", "vocab=64", "pp=1", "layers=1"))


@pytest.mark.parametrize("emit", [emit_dot, emit_compact_dot])
def test_a_drawing_dot_cannot_rank_in_columns_is_still_drawn(compiled, dot_binary, emit):
    spec = compiled(RANKING_CASE[0], *RANKING_CASE[1])
    drawing = svg.render_svg(emit(spec), program=dot_binary)
    assert drawing.rstrip().endswith(b"</svg>")
