"""A `dot` that fails costs its SVG only: a short warning, every other artifact written, exit 0."""

import os
import stat

from par import build as driver
from par.codegen import svg
from par.codegen.renderer import ArtifactError

GRAPHVIZ = {"dag.svg", "dag.compact.svg"}
DUMP_LINES = 3000


def fake_dot(folder):
    """A `dot` on PATH that fails on full views, as Graphviz 2.43 did (one Error line, then a
    dump of its internal state), and draws a stand-in SVG of anything else."""
    folder.mkdir()
    program = folder / "dot"
    program.write_text(
        "#!/bin/sh\n"
        'if grep -q "full DAG of"; then\n'
        "  echo 'Error: trouble in init_rank' >&2\n"
        f"  i=0; while [ $i -lt {DUMP_LINES} ]; do printf '\\t%%0 %d\\n' $i >&2; i=$((i+1)); done\n"
        "  exit 1\n"
        "fi\n"
        "echo '<svg>stand-in</svg>'\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


def test_a_failing_dot_skips_its_svg_with_a_short_warning_and_writes_the_rest(specs, tmp_path, par, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_dot(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "build"
    code, _, err = par("build", specs, "-o", out)
    assert code == 0, err
    every = {name for name, _ in driver.artifact_renderers()}
    for spec in ("gpt_tp2_pp2", "single_gpu"):
        assert {path.name for path in (out / spec).iterdir()} == every - {"dag.svg"}
        assert (out / spec / "dag.compact.svg").read_text() == "<svg>stand-in</svg>\n"
        warning = [line for line in err.splitlines() if line.startswith("par: warning:") and f"{spec}.par" in line]
        assert len(warning) == 1, err
        assert "dag.svg" in warning[0] and "Error: trouble in init_rank" in warning[0]
        assert f"{DUMP_LINES:,} more lines" in warning[0]
    assert "%0" not in err and len(err.splitlines()) < 10, err
    assert "nothing was written" not in err

    code, listed, err = par("build", specs, "-o", out, "--check")
    assert code == 0 and listed == "", err  # the SVG that cannot be drawn is not called missing


def test_a_dot_that_hangs_costs_its_svgs_only(specs, tmp_path, par, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "dot").write_text("#!/bin/sh\nexec sleep 10\n")
    (folder / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(svg, "DOT_TIMEOUT_S", 0.2)
    out = tmp_path / "build"
    code, _, err = par("build", specs / "single_gpu.par", "-o", out)
    assert code == 0, err
    assert {path.name for path in (out / "single_gpu").iterdir()} == {name for name, _ in driver.artifact_renderers()} - GRAPHVIZ
    warnings = [line for line in err.splitlines() if line.startswith("par: warning:")]
    assert len(warnings) == 2 and all("did not finish within 0.2 s" in line for line in warnings), err


def column_failing_dot(folder):
    """A `dot` on PATH that fails as Graphviz 2.43's ranking does on drawings with GPU columns,
    and draws (and logs) whatever comes without them."""
    folder.mkdir()
    program = folder / "dot"
    program.write_text(
        "#!/bin/sh\n"
        f"text=$(cat)\n"
        'if printf %s "$text" | grep -q \'group="column_\'; then\n'
        "  echo 'Error: trouble in init_rank' >&2; exit 1\n"
        "fi\n"
        f"echo call >> {folder / 'calls'}\n"
        "echo '<svg>without columns</svg>'\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


def test_a_drawing_graphviz_cannot_rank_in_columns_is_drawn_without_them(specs, tmp_path, par, monkeypatch):
    folder = column_failing_dot(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "build"
    code, _, err = par("build", specs / "gpt_tp2_pp2.par", "-o", out)
    assert code == 0 and "warning" not in err, err
    for name in GRAPHVIZ:
        assert (out / "gpt_tp2_pp2" / name).read_text() == "<svg>without columns</svg>\n"
    assert 'group="column_' in (out / "gpt_tp2_pp2" / "dag.dot").read_text()  # the DOT file keeps them
    assert (folder / "calls").read_text().count("call") == 2


def test_other_failures_are_not_retried(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "dot").write_text(f"#!/bin/sh\necho call >> {folder / 'calls'}\necho 'Error: syntax error' >&2\nexit 1\n")
    (folder / "dot").chmod(0o755)
    try:
        svg.render_svg('digraph { a [label="a", group="column_0_0"] }', program=str(folder / "dot"))
    except ArtifactError as error:
        assert "syntax error" in str(error)
    else:
        raise AssertionError("a failing dot must raise")
    assert (folder / "calls").read_text().count("call") == 1
