"""`par lint`, an independent reader of DOT files, finds nothing wrong in the drawings `par` makes."""

from pathlib import Path

import pytest

from par.cli import main
from par.codegen.dot.emit import emit_compact_dot, emit_dot

ROOT = Path(__file__).resolve().parents[2]
SPECS = ["tests/golden/specs/gpt_tp2_pp2.par", "tests/golden/specs/llama_sp_dp2.par", "tests/golden/specs/single_gpu.par", "specs/layerwise.par"]


@pytest.mark.parametrize("spec", SPECS)
def test_the_drawings_lint_clean_and_the_full_one_matches_the_spec(compiled, tmp_path, capsys, spec):
    drawn = compiled(spec)
    full, compact = tmp_path / "dag.dot", tmp_path / "dag.compact.dot"
    full.write_text(emit_dot(drawn), encoding="utf-8")
    compact.write_text(emit_compact_dot(drawn), encoding="utf-8")
    capsys.readouterr()
    assert main(["lint", str(full), "--spec", str(ROOT / spec)]) == 0
    assert main(["lint", str(compact)]) == 0
    output = capsys.readouterr().out
    assert output.count(" 0 findings") == 2, output
