"""Artifacts name the spec by its path relative to the current folder, so a checkout builds the
same bytes wherever it lies and however the spec is named on the command line."""

import shutil

from par.codegen.artifacts import renderers
from par.dsl.compiler import compile_file
from par.dsl.frontend.inputs import spec_name
from tests.build.conftest import GOLDEN_SPECS

TEXT_ARTIFACTS = ("dag.json", "dag.dot", "dag.compact.dot", "model.py", "report.md", "timeline.svg")


def artifacts(path) -> dict[str, bytes]:
    compiled = compile_file(path)
    rendered = {name: renderer(compiled) for name, renderer in renderers() if name in TEXT_ARTIFACTS}
    return {name: content.encode() if isinstance(content, str) else content for name, content in rendered.items()}


def checkout(root):
    (root / "specs").mkdir(parents=True)
    shutil.copyfile(GOLDEN_SPECS / "single_gpu.par", root / "specs" / "x.par")
    return root


def test_absolute_and_relative_paths_and_two_locations_give_the_same_bytes(tmp_path, monkeypatch):
    first, second = checkout(tmp_path / "a"), checkout(tmp_path / "deeper" / "b")
    monkeypatch.chdir(first)
    relative = artifacts("specs/x.par")
    assert artifacts(first / "specs" / "x.par") == relative
    assert artifacts("./specs/../specs/x.par") == relative
    monkeypatch.chdir(second)
    assert artifacts(second / "specs" / "x.par") == relative
    assert b"specs/x.par" in relative["model.py"] and str(tmp_path).encode() not in b"".join(relative.values())


def test_a_spec_outside_the_current_folder_keeps_the_path_as_given(tmp_path, monkeypatch):
    root = checkout(tmp_path / "a")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert spec_name(root / "specs" / "x.par") == (root / "specs" / "x.par").as_posix()
    assert spec_name("../a/specs/x.par") == "../a/specs/x.par"


def test_a_current_folder_reached_through_a_symlink_still_gives_a_relative_name(tmp_path, monkeypatch):
    root = checkout(tmp_path / "real")
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(root)
    assert spec_name(tmp_path / "link" / "specs" / "x.par") == "specs/x.par"
