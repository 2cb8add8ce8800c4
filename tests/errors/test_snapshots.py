"""Bad inputs and the exact diagnostics `par check` prints for them (snapshots under review)."""

import importlib.util
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SPECS = sorted(HERE.glob("*.par"))
LOCATED = re.compile(r"^\S+:\d+:\d+: (error|warning|note): \S")

_spec = importlib.util.spec_from_file_location("errors_regen", HERE / "regen.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


def test_every_bad_input_has_a_snapshot():
    assert SPECS
    assert [p.stem for p in SPECS] == sorted(p.stem for p in HERE.glob("*.expected"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_diagnostics_match_the_snapshot(spec):
    code, output = regen.check_output(spec.name)  # in-process: a traceback would fail the test
    assert code == 1
    headlines = [line for line in output.splitlines() if not line.startswith(" ")]
    assert headlines and all(LOCATED.match(line) for line in headlines), headlines
    assert any(": error: " in line for line in headlines)
    assert output == spec.with_suffix(".expected").read_text(encoding="utf-8")
