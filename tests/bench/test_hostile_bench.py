"""bench/hostile.py runs end to end on a few inputs: every mutated spec and DOT file gives a clean
outcome, none a traceback (the full run is `python bench/hostile.py`)."""

import importlib.util
import resource
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "hostile.py"


def load():
    spec = importlib.util.spec_from_file_location("hostile_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_short_hostile_run_has_no_traceback(tmp_path, capsys, monkeypatch):
    bench = load()
    monkeypatch.setattr(sys, "argv", ["hostile.py", "--specs", "40", "--dots", "20", "--seed", "3", "--save", str(tmp_path)])
    before = resource.getrlimit(resource.RLIMIT_AS)
    try:
        assert bench.main() == 0
    finally:  # the bench caps this process's memory; the rest of the test run needs it back
        resource.setrlimit(resource.RLIMIT_AS, before)
    out = capsys.readouterr().out
    assert "specs: 40 runs" in out and "dots: 20 runs" in out
    assert "0 tracebacks" in out
    assert not any(tmp_path.iterdir())  # nothing failed, so nothing was saved
