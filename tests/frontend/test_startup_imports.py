"""Start-up: each command imports what it runs (bench/startup.py measures the times; this holds
the imports that made `par --version`, `par check` and `par build` slow out of them)."""

import subprocess
import sys
from pathlib import Path

import pytest

from par.cli import build_parser
from par.commands import COMMANDS

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
# Modules of commands other than the one run: a command line naming one command loads only it.
OTHER_COMMANDS = ["par.commands.build", "par.commands.cost", "par.commands.explain", "par.commands.new", "par.hf_config"]
# What lark loads of regex and interegular when it uses them (par.dsl.frontend defers both).
LARK_OPTIONAL = ["regex._regex_core", "interegular.patterns"]


def imported(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return set(result.stderr.split())


def loaded(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


@pytest.mark.parametrize(
    "args, absent",
    [
        (["--version"], ["par.commands.check", "par.dsl", "par.codegen", "lark", "jinja2", "networkx", *OTHER_COMMANDS]),
        (["check", str(SEED)], ["jinja2", "networkx", "par.codegen", *OTHER_COMMANDS, *LARK_OPTIONAL]),
    ],
)
def test_a_command_imports_only_what_it_runs(args, absent):
    modules = imported(*args)
    assert "par.cli" in modules  # the probe ran
    assert [package for package in absent if loaded(modules, package)] == []


def test_a_build_imports_no_other_command(tmp_path):
    modules = imported("build", str(SEED), "-o", str(tmp_path), "--svg", "none")
    assert "par.codegen.pytorch.emit" in modules  # the build ran
    others = [package for package in OTHER_COMMANDS if package != "par.commands.build"]
    # Nor what only other builds need: Graphviz's runner (drawings) and the serving cost (serving specs).
    unused = ["subprocess", "par.dsl.cost.serving", "par.codegen.cost.serving"]
    assert [package for package in ["networkx", "par.lint", *others, *LARK_OPTIONAL, *unused] if loaded(modules, package)] == []
    assert (tmp_path / SEED.stem / "model.py").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "a.par", "-D", "tp=2", "--max-nodes", "100"],
        ["build", "a.par", "b.par", "-o", "out", "--svg", "none", "--check"],
        ["cost", "a.par"],
        ["new", "--from-hf", "config.json", "--tp", "2", "--dtype", "bf16"],
        ["fmt", "a.par"],
    ],
)
def test_a_parser_of_one_command_parses_as_the_parser_of_all(argv):
    whole, one = vars(build_parser().parse_args(argv)), vars(build_parser(argv).parse_args(argv))
    assert one == whole
    assert len(build_parser(argv)._subparsers._group_actions[0].choices) == 1  # only that command's parser
    assert list(build_parser()._subparsers._group_actions[0].choices) == list(COMMANDS)


def test_version_is_answered_without_the_parser(capsys):
    from par import __version__
    from par.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"par {__version__}\n"
    with pytest.raises(SystemExit) as exit:  # anything else is argparse's, as before
        main(["--version", "check"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"par {__version__}\n"


# Run after par's parser is imported, in a fresh process: lark goes on using regex and interegular.
DEFERRED = """\
import sys
import par.dsl.frontend.parser
from lark import Lark
from lark.exceptions import LexError
assert "interegular.patterns" not in sys.modules
try:
    Lark('start: A | B\\nA: /a+/\\nB: /ab?/\\n', parser="lalr", strict=True)
except LexError as exc:
    print(str(exc).splitlines()[0])
import regex
print(type(sys.modules["regex"]).__name__, regex.fullmatch(r"\\p{L}+", "abc") is not None)
"""


def test_lark_still_uses_regex_and_interegular_once_they_are_needed():
    result = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True, cwd=ROOT, timeout=120)
    collision, regex = result.stdout.splitlines()
    assert collision.startswith("Collision between Terminals"), result.stderr  # interegular's finding, in either order
    assert regex == "module True"  # the module itself, loaded
