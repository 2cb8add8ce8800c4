"""`python tests/regen.py` rewrites every kind of snapshot: it runs each regen script there is."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_regen_entry_point_runs_every_regen_script():
    spec = importlib.util.spec_from_file_location("regen", ROOT / "tests" / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    scripts = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").glob("*/regen*.py")}
    assert scripts == set(regen.SCRIPTS)
    for script in regen.SCRIPTS:
        assert "def main(" in (ROOT / script).read_text(encoding="utf-8"), script
