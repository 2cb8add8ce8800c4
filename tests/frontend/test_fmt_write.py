"""`par fmt --write`: the file's content is replaced atomically; its link, mode and folder stay as they were."""

import errno
import os
import stat

from par.cli import main

UNFORMATTED = "model m : gpt {layers=4,hidden 64 heads 4 ffn 256 batch 8 seq 16 dtype fp32}  # note\n"
FORMATTED = "model m : gpt { layers 4  hidden 64  heads 4  ffn 256  batch 8  seq 16  dtype fp32 }  # note\n"


def test_a_symlink_is_written_through_and_the_mode_kept(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "spec.par"
    target.write_text(UNFORMATTED)
    os.chmod(target, 0o751)
    link = tmp_path / "links" / "spec.par"
    os.symlink(os.path.join("..", "real", "spec.par"), link)
    assert main(["fmt", "--write", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "spec.par")
    assert target.read_text() == FORMATTED
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["links", "real", "spec.par", "spec.par"]
    assert f"{link}: formatted" in capsys.readouterr().err


def test_a_write_that_fails_leaves_the_file_and_no_temporary(tmp_path, capsys, monkeypatch):
    path = tmp_path / "spec.par"
    path.write_text(UNFORMATTED)

    def replace(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    assert main(["fmt", "--write", str(path)]) == 1
    assert f"cannot write {path}: No space left on device" in capsys.readouterr().err
    assert path.read_text() == UNFORMATTED
    assert list(tmp_path.iterdir()) == [path]
