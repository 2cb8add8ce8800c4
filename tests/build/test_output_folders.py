"""Where `par build` writes: only inside OUT, each spec into OUT/<stem>/, a stem every system accepts."""

import os
import unicodedata
from pathlib import Path

import pytest

from par import build as driver
from par.cli import main
from par.output_folders import folder_problem

SPEC = (Path(__file__).resolve().parents[1] / "golden" / "specs" / "single_gpu.par").read_text()


@pytest.fixture
def home(tmp_path):
    """A user's folder: their own report.md and model.py, a specs/ folder, and OUT inside it."""
    folder = tmp_path / "home"
    (folder / "specs").mkdir(parents=True)
    (folder / "report.md").write_text("my own notes\n")
    (folder / "model.py").write_text("print('mine')\n")
    return folder


@pytest.mark.parametrize(
    "name",
    [
        "...par",  # stem '..': the parent of OUT
        "..par",  # stem '.': OUT itself
        ".par",  # no stem at all
        "a\\...par",  # a backslash: the part after it is '..'
        "x\\y.par",
        "x\ny.par",  # a control character
        "a\x1b[2J.par",
        "a:b.par",  # forbidden on Windows
        "notes..par",  # Windows drops the trailing dot: notes/
        "notes .par",
        "CON.par",  # a Windows device name
        "nul.old.par",
    ],
)
def test_a_stem_that_is_not_one_folder_name_is_refused_and_nothing_is_written(home, par, snap, name):
    spec = home / "specs" / name
    spec.write_text(SPEC)
    (home / "specs" / "fine.par").write_text(SPEC)
    before = snap(home)
    code, _, err = par("build", home / "specs", "-o", home / "out")
    assert code == 2, err
    assert "cannot build into <OUT>/<stem>/" in err and "rename the file" in err and "Traceback" not in err
    if str(spec).isprintable():
        assert f"{spec}: " in err
    else:
        assert name not in err and "U+00" in err  # named, but no control character reaches the terminal
    assert snap(home) == before
    assert not (home / "out").exists()


@pytest.mark.parametrize("name", ["a.b.par", ".hidden.par", "é.par", "console.par", "con-x.par", "COM10.par", "x y.par"])
def test_ordinary_names_pass_the_rule(name):
    assert folder_problem(Path("specs") / name) is None


@pytest.mark.parametrize(
    "first, second",
    [
        ("a.par", "sub/a.par"),
        ("Model.par", "sub/model.par"),  # one folder on macOS and Windows
        (unicodedata.normalize("NFC", "é.par"), "sub/" + unicodedata.normalize("NFD", "é.par")),  # one on macOS
    ],
)
def test_specs_that_would_share_a_folder_are_refused(home, par, snap, first, second):
    for name in (first, second):
        (home / "specs" / name).parent.mkdir(exist_ok=True)
        (home / "specs" / name).write_text(SPEC)
    before = snap(home)
    code, _, err = par("build", home / "specs", "-o", home / "out")
    assert code == 2 and "would both build into <OUT>/" in err and "rename one" in err
    assert snap(home) == before


def test_the_same_spec_named_twice_is_no_clash(home, par):
    spec = home / "specs" / "a.par"
    spec.write_text(SPEC)
    (home / "link").mkdir()
    os.symlink(spec, home / "link" / "a.par")
    code, _, err = par("build", spec, home / "link" / "a.par", "--check", "-o", home / "out")
    assert code == 1 and "would both build" not in err  # --check: only missing artifacts


def test_a_spec_folder_that_leads_out_of_out_is_not_written_through(home, par, snap):
    spec = home / "specs" / "single_gpu.par"
    spec.write_text(SPEC)
    out = home / "out"
    assert par("build", spec, "-o", out)[0] == 0
    elsewhere = home / "elsewhere"
    (out / "single_gpu").rename(elsewhere)
    os.symlink(elsewhere, out / "single_gpu")
    spec.write_text(SPEC.replace("batch 4", "batch 8"))
    before = snap(home)
    code, _, err = par("build", spec, "-o", out)
    assert code == 1 and f"{out / 'single_gpu' / 'dag.json'} is not inside {out}" in err
    assert snap(home) == before


def test_write_all_refuses_an_artifact_outside_out(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(driver.WriteError, match="is not inside"):
        driver.write_all([driver.Artifact(out / ".." / "report.md", b"x")], out)
    with pytest.raises(driver.WriteError, match="is not inside"):
        driver.write_all([driver.Artifact(out / "report.md", b"x")], out)  # a spec writes into a folder of its own
    assert list(tmp_path.iterdir()) == []


def test_an_empty_out_is_a_usage_error(home, capsys, monkeypatch):
    spec = home / "specs" / "single_gpu.par"
    spec.write_text(SPEC)
    monkeypatch.chdir(home)
    with pytest.raises(SystemExit) as exit:
        main(["build", str(spec), "-o", ""])
    assert exit.value.code == 2
    assert "argument -o/--out: OUT is empty" in capsys.readouterr().err
    assert sorted(path.name for path in home.iterdir()) == ["model.py", "report.md", "specs"]
