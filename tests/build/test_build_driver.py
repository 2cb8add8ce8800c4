"""`par build`: artifacts for every spec, atomic and all-or-nothing, untouched when unchanged, --check."""

import shutil
from collections import Counter
from pathlib import Path

import pytest

from par import build as driver
from par.codegen import artifacts, svg

ROOT = Path(__file__).resolve().parents[2]
DRAWN = {"dag.json", "dag.dot", "dag.compact.dot"}
GRAPHVIZ = {"dag.svg", "dag.compact.svg"}


def files_of(folder):
    return {path.name for path in folder.iterdir()}


def test_every_spec_gets_its_folder_of_artifacts(specs, tmp_path, par):
    out = tmp_path / "build"
    code, _, err = par("build", specs, "-o", out)
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == ["gpt_tp2_pp2", "single_gpu"]
    for folder in out.iterdir():
        assert files_of(folder) == {name for name, _ in driver.artifact_renderers()} - (set() if shutil.which("dot") else GRAPHVIZ)
    assert "[1/2]" in err and "[2/2]" in err


def test_check_passes_after_a_build_and_names_a_touched_byte(specs, tmp_path, par):
    out = tmp_path / "build"
    assert par("build", specs, "-o", out)[0] == 0
    code, listed, err = par("build", specs, "-o", out, "--check")
    assert code == 0 and listed == "", err
    touched = out / "gpt_tp2_pp2" / "dag.dot"
    data = bytearray(touched.read_bytes())
    data[200] ^= 0x01
    touched.write_bytes(bytes(data))
    (out / "single_gpu" / "dag.compact.dot").unlink()
    code, listed, _ = par("build", specs, "-o", out, "--check")
    assert code == 1
    assert listed.splitlines() == [f"{touched}: stale", f"{out / 'single_gpu' / 'dag.compact.dot'}: missing"]


def test_check_writes_nothing(specs, tmp_path, par):
    out = tmp_path / "build"
    code, listed, _ = par("build", specs, "-o", out, "--check")
    assert code == 1
    assert all(line.endswith(": missing") for line in listed.splitlines()) and listed
    assert not out.exists()


def test_unchanged_files_are_not_rewritten(specs, tmp_path, par, snap, make_old):
    out = tmp_path / "build"
    assert par("build", specs, "-o", out)[0] == 0
    make_old(out)
    before = snap(out)
    code, _, err = par("build", specs, "-o", out)
    assert code == 0
    assert snap(out) == before
    assert f"wrote 0 of {len(before)} files" in err


def test_what_several_artifacts_are_made_from_is_made_once_per_spec(specs, tmp_path, par, monkeypatch):
    """The DOT text of each drawing (the .dot file and its SVG) and the cost (report.md, timeline.svg)."""
    calls = Counter()

    def counting(name, real):
        def counted(compiled):
            calls[(name, compiled.deployment.name)] += 1
            return real(compiled)

        return counted

    for name in ("emit_dot", "emit_compact_dot", "spec_cost"):
        monkeypatch.setattr(artifacts, name, counting(name, getattr(artifacts, name)))
    assert par("build", specs, "-o", tmp_path / "build")[0] == 0
    names = ("emit_dot", "emit_compact_dot", "spec_cost")
    assert calls == {(name, spec): 1 for name in names for spec in ("gpt_tp2_pp2", "single_gpu")}


def test_a_changed_spec_rewrites_only_what_changed(specs, par, snap, earlier):
    out, before = earlier
    assert par("build", specs, "-o", out)[0] == 0
    after = snap(out)
    changed = {name for name in before if before[name] != after[name]}
    assert changed and all(name.startswith("single_gpu/") for name in changed)
    assert "single_gpu/dag.json" in changed


def test_a_bad_spec_among_good_ones_leaves_every_artifact_untouched(specs, par, snap, earlier, bad_spec):
    out, before = earlier
    (specs / "broken.par").write_text(bad_spec)
    code, _, err = par("build", specs, "-o", out)
    assert code == 1
    assert "broken.par:1:" in err and "error" in err and "Traceback" not in err
    assert "nothing was written" in err
    assert snap(out) == before


def test_a_renderer_that_raises_leaves_every_artifact_untouched(specs, par, snap, earlier, monkeypatch):
    out, before = earlier
    real = driver.artifact_renderers()

    def explode(compiled):
        if compiled.deployment.name == "single_gpu":
            raise RuntimeError("injected failure")
        return "fine\n"

    monkeypatch.setattr(driver, "artifact_renderers", lambda svg: real[:2] + [("extra.txt", explode)] + real[2:])
    code, _, err = par("build", specs, "-o", out)
    assert code == 1
    assert "cannot render extra.txt: RuntimeError: injected failure" in err and "bug in par" in err
    assert snap(out) == before


def test_a_write_that_fails_midway_leaves_every_artifact_untouched(specs, par, snap, earlier, monkeypatch):
    out, before = earlier
    spec = specs / "gpt_tp2_pp2.par"
    spec.write_text(spec.read_text().replace(" batch ", " batch 2 * "))  # both specs' artifacts change
    real, calls = driver.stage, []

    def stage_then_fail(path, content):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(path))
        return real(path, content)

    monkeypatch.setattr(driver, "stage", stage_then_fail)
    code, _, err = par("build", specs, "-o", out)
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert len(calls) == 4
    assert snap(out) == before  # no artifact replaced, no temporary file left


def test_without_graphviz_the_build_says_so_once_and_writes_the_rest(specs, tmp_path, par, monkeypatch):
    out = tmp_path / "build"
    if shutil.which("dot"):
        assert par("build", specs, "-o", out)[0] == 0  # with the SVGs of an earlier build present
    monkeypatch.setattr(svg, "dot_program", lambda: None)
    code, _, err = par("build", specs, "-o", tmp_path / "bare")
    assert code == 0
    assert err.count(svg.MISSING) == 1
    for folder in (tmp_path / "bare").iterdir():
        assert DRAWN <= files_of(folder) and not GRAPHVIZ & files_of(folder)
    if shutil.which("dot"):
        code, listed, err = par("build", specs, "-o", out, "--check")
        assert code == 0 and listed == ""  # SVGs are not checked without dot, not called stale
        assert err.count(svg.MISSING) == 1


@pytest.mark.slow  # every shipped spec, twice
def test_the_shipped_specs_build_and_check(tmp_path, par, monkeypatch):
    """The repository's own use: `par build specs -o build`, then `--check` (a touched byte: above).
    Without the drawings, which the README's commands draw (tests/docs): Graphviz's layouts of
    specs/ are most of a minute."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "build"
    code, _, err = par("build", "specs", "-o", out, "--svg", "none")
    assert code == 0, err
    code, listed, err = par("build", "specs", "-o", out, "--check", "--svg", "none")
    assert code == 0 and listed == "", err


def test_a_context_parallel_spec_gets_every_artifact(tmp_path, par):
    out = tmp_path / "build"
    code, _, err = par("build", ROOT / "docs" / "examples" / "cp_tp2_cp2.par", "-o", out, "--svg", "none")
    assert code == 0, err
    written = files_of(out / "cp_tp2_cp2")
    assert written == {name for name, _ in driver.artifact_renderers()} - GRAPHVIZ
    assert [line for line in err.splitlines() if "model.py" in line] == []
    assert "context_attention(" in (out / "cp_tp2_cp2" / "model.py").read_text()
    assert "Context parallelism" in (out / "cp_tp2_cp2" / "report.md").read_text()
