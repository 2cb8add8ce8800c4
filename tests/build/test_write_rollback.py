"""A write that fails at any point leaves every artifact as it was: bytes, time and inode, with no
temporary file or backup left behind (par.build.write_all)."""

import errno
import os
import re
import shutil
from pathlib import Path

import pytest

from par import build as driver


@pytest.fixture
def both_changed(specs, par, earlier):
    """The earlier build with both specs edited, and how many artifacts a build would rename."""
    out, before = earlier
    spec = specs / "gpt_tp2_pp2.par"
    spec.write_text(spec.read_text().replace(" batch ", " batch 2 * "))
    code, listed, _ = par("build", specs, "-o", out, "--check")
    assert code == 1
    return out, before, len(listed.splitlines())


def fail_rename(monkeypatch, number, error):
    """Makes the `number`th rename of a temporary file over its artifact raise `error`."""
    real, calls = os.replace, []

    def replace(source, target):
        if str(source).endswith(".tmp"):
            calls.append(target)
            if len(calls) == number:
                raise error
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_folder_in_place_of_an_artifact_fails_the_build_and_changes_nothing(specs, par, snap, earlier):
    out, _ = earlier
    report = out / "single_gpu" / "report.md"
    report.unlink()
    report.mkdir()
    before = snap(out)
    for _ in range(3):
        code, _, err = par("build", specs, "-o", out)
        assert code == 1 and f"cannot write {report}: " in err and "Traceback" not in err
        assert "every artifact is as it was" in err
        assert snap(out) == before
    assert report.is_dir()
    assert not [path for path in out.rglob(".*")]


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_rename_that_fails_is_rolled_back(specs, par, snap, both_changed, monkeypatch, which):
    out, before, renames = both_changed
    number = {"first": 1, "middle": renames // 2, "last": renames}[which]
    calls = fail_rename(monkeypatch, number, OSError(errno.EIO, "Input/output error"))
    code, _, err = par("build", specs, "-o", out)
    assert code == 1 and f"cannot write {calls[-1]}: Input/output error" in err
    assert len(calls) == number
    assert snap(out) == before


def test_an_interrupt_during_the_renames_is_rolled_back(specs, par, snap, both_changed, monkeypatch):
    out, before, renames = both_changed
    fail_rename(monkeypatch, renames - 1, KeyboardInterrupt())
    code, _, err = par("build", specs, "-o", out)
    assert code == 130 and "interrupted" in err
    assert snap(out) == before


def test_a_new_spec_folder_is_removed_when_the_write_fails(specs, par, snap, both_changed, monkeypatch):
    out, before, renames = both_changed
    shutil.copyfile(specs / "single_gpu.par", specs / "third.par")
    fail_rename(monkeypatch, renames + 1, OSError(errno.ENOSPC, "No space left on device"))
    code, _, _ = par("build", specs, "-o", out)
    assert code == 1
    assert snap(out) == before and not (out / "third").exists()


def test_an_artifact_that_cannot_be_put_back_is_named_with_where_its_content_is(specs, par, snap, both_changed, monkeypatch):
    out, before, renames = both_changed
    fail_rename(monkeypatch, renames, OSError(errno.EIO, "Input/output error"))
    real, restores = os.replace, []

    def replace(source, target):
        replaced = str(source).endswith(".bak") and Path(target).read_bytes() != before[os.path.relpath(target, out)][0]
        if replaced and not restores:  # the first put-back of an artifact that was really replaced
            restores.append(target)
            raise OSError(errno.EIO, "Input/output error")
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = par("build", specs, "-o", out)
    assert code == 1
    lost, backup = re.search(r"could not put back (\S+); its earlier content is in (\S+)", err).groups()
    assert lost == str(restores[0])
    name = os.path.relpath(lost, out)
    assert Path(backup).read_bytes() == before[name][0]
    after = snap(out)
    assert {key: after[key] for key in before if key != name} == {key: before[key] for key in before if key != name}
    assert "every other artifact is as it was" in err


def test_without_hard_links_the_artifacts_are_renamed_aside_and_put_back(specs, par, snap, both_changed, monkeypatch):
    out, before, renames = both_changed

    def no_link(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    fail_rename(monkeypatch, renames, OSError(errno.EIO, "Input/output error"))
    assert par("build", specs, "-o", out)[0] == 1
    assert snap(out) == before
    monkeypatch.undo()
    monkeypatch.setattr(os, "link", no_link)
    assert par("build", specs, "-o", out)[0] == 0
    assert not [path for path in out.rglob(".*")]
    assert par("build", specs, "-o", out, "--check")[0] == 0


def test_a_file_written_twice_in_one_write_is_undone_to_what_it_was(tmp_path, monkeypatch):
    """The same spec named by two paths writes its folder twice; undoing runs back in order."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "kept.txt").write_bytes(b"earlier\n")
    twice = [
        driver.Artifact(out / "a" / "kept.txt", b"first\n"),
        driver.Artifact(out / "a" / "new.txt", b"first\n"),
        driver.Artifact(out / "a" / "kept.txt", b"second\n"),
        driver.Artifact(out / "a" / "new.txt", b"second\n"),
    ]
    fail_rename(monkeypatch, 4, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(driver.WriteError, match="cannot write .*new.txt: Input/output error"):
        driver.write_all(twice, out)
    assert sorted(path.name for path in (out / "a").iterdir()) == ["kept.txt"]
    assert (out / "a" / "kept.txt").read_bytes() == b"earlier\n"
