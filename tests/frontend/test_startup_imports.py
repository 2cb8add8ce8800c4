"""Start-up: each command imports what it runs (bench/startup.py measures the times; this holds
the imports that made `par --version` and `par check` slow out of them)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "specs" / "baseline_tp8_pp2.par"
# Runs the command line in-process, then lists every module it imported.
PROBE = """\
import sys
from par.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("\\n".join(sorted(sys.modules)), file=sys.stderr)
"""


def imported(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return set(result.stderr.split())


def loaded(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


@pytest.mark.parametrize(
    "args, absent",
    [
        (["--version"], ["lark", "jinja2", "networkx", "par.dsl.compiler", "par.dsl.frontend.parser", "par.codegen.pytorch"]),
        (["check", str(SEED)], ["jinja2", "networkx", "par.codegen.pytorch", "par.codegen.templating"]),
    ],
)
def test_a_command_imports_only_what_it_runs(args, absent):
    modules = imported(*args)
    assert "par.cli" in modules  # the probe ran
    assert [package for package in absent if loaded(modules, package)] == []
