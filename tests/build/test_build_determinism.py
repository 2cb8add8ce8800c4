"""The same specs give byte-identical artifacts in separate processes with different hash seeds."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(out: Path, seed: str) -> dict[str, bytes]:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run(
        [sys.executable, "-m", "par", "build", "tests/golden/specs", "-o", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_builds_under_different_hash_seeds_are_byte_identical(tmp_path):
    first = build(tmp_path / "a", "0")
    second = build(tmp_path / "b", "4242")
    assert first.keys() == second.keys()
    assert {"gpt_tp2_pp2/dag.dot", "gpt_tp2_pp2/dag.compact.dot", "llama_sp_dp2/dag.json"} <= first.keys()
    assert [name for name in first if first[name] != second[name]] == []
