"""Helpers for the `par build` tests: a folder of small specs, the command run in-process, snapshots."""

import os
import shutil
from pathlib import Path

import pytest

from par.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_SPECS = ROOT / "tests" / "golden" / "specs"
BAD_SPEC = "model bad : gpt { layers 2  hidden 63  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }\n"


@pytest.fixture
def specs(tmp_path) -> Path:
    """A folder holding two small good specs."""
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("gpt_tp2_pp2.par", "single_gpu.par"):
        shutil.copyfile(GOLDEN_SPECS / name, folder / name)
    return folder


@pytest.fixture
def par(capsys):
    """par(*args) -> (exit code, stdout, stderr) of the command line, run in this process."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under `folder` (temporary files included): bytes, mtime and inode."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found[str(path.relative_to(folder))] = (path.read_bytes(), stat.st_mtime_ns, stat.st_ino)
    return found


@pytest.fixture
def snap():
    return snapshot


@pytest.fixture
def bad_spec():
    return BAD_SPEC


def age(folder: Path) -> None:
    """Moves every file's mtime one hour back, so a rewrite would show even on coarse clocks."""
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns - 3_600_000_000_000, stat.st_mtime_ns - 3_600_000_000_000))


@pytest.fixture
def make_old():
    return age


@pytest.fixture
def earlier(specs, tmp_path, par, snap, make_old):
    """A build made an hour ago, then single_gpu.par edited so that its artifacts would change.

    Returns (out folder, snapshot of the earlier artifacts).
    """
    out = tmp_path / "build"
    assert par("build", specs, "-o", out)[0] == 0
    make_old(out)
    before = snap(out)
    spec = specs / "single_gpu.par"
    spec.write_text(spec.read_text().replace("batch 4", "batch 8"))
    return out, before
