"""Every command shown in README.md and docs/*.md works as shown: the docs are tests.

Commands come from fenced code blocks: lines starting with `par `, `$ par `, `python`,
`torchrun`, `pip install` or `pytest`, with a trailing `# comment` dropped and `&&` splitting a
line into its commands. Lines like `par lint: 1 file checked, ...` are output, not commands. A
block right after `<!-- docs-test: skip (reason) -->` is left out; the reason is required.

What runs and what is only checked, and why:
- `par ...` commands run, in a temporary folder holding a copy of specs/, in the order a page
  shows them (so a `--check` after a build sees that build), one folder per page. Each must exit
  0, unless the page shows its output (`$ par ...` followed by lines): then that output must be
  exactly what `par` prints, and the exit code 1 when it shows an `error:`.
- A synopsis (`par check SPEC...`: placeholders in capitals, `[...]`, `|`) cannot run: its
  subcommand must exist and every option it names must be in that subcommand's `--help`.
- `torchrun ...` lines run the generated code on CPU (4 processes, ~15 s each); they need torch.
- `python tests/...` and `python bench/...` lines rewrite files of the checkout or measure for
  minutes: only their script is checked (it exists and runs as `__main__`).
- `pip install` lines change the running environment and need a package index: only their
  arguments are checked (the extras exist in pyproject.toml, a pinned torch is the pin
  pyproject.toml uses). `pytest` lines would run this suite inside itself: only checked to be
  the plain `pytest -q` or a `-m` selection of it.

Running every `par build` of the full specs takes minutes, so that part is marked slow; the
shape checks and the commands whose output a page shows are fast.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(\$ )?(par |python|torchrun |pip install |pytest)")
OUTPUT = re.compile(r"^par( \w+)?: ")  # `par: wrote ...`, `par lint: 1 file checked`
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>[^)]+)\) -->\s*$")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|\.\.\.|\[|\|")
FENCE = re.compile(r"^```[\w-]*\n(?P<body>.*?)^```", re.S | re.M)


@dataclass
class Shown:
    """One command as a page shows it, and the output shown under it (None: no output shown)."""

    page: str
    line: int
    text: str
    output: str | None = None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


@dataclass
class Block:
    page: str
    line: int
    commands: list[Shown] = field(default_factory=list)


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page that show commands, in order; blocks marked to skip left out."""
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if "docs-test" in before:
            assert SKIP.search(before), f"{name}: a docs-test marker needs a reason: {before}"
            continue
        first = text[: fence.start()].count("\n") + 2
        block = Block(name, first)
        lines = fence["body"].splitlines()
        for index, line in enumerate(lines):
            if not COMMAND.match(line) or OUTPUT.match(line):
                continue
            command = re.sub(r"\s+#.*$", "", line.removeprefix("$ ")).strip()
            output = None
            if line.startswith("$ "):
                rest = lines[index + 1 :]
                end = next((i for i, later in enumerate(rest) if later.startswith("$ ")), len(rest))
                output = "\n".join(rest[:end])
            for part in command.split(" && "):
                block.commands.append(Shown(name, first + index, part.strip(), output))
        if block.commands:
            found.append(block)
    return found


def all_commands() -> list[Shown]:
    return [command for page in PAGES for block in blocks(page) for command in block.commands]


def is_synopsis(command: Shown) -> bool:
    return command.text.startswith("par ") and bool(PLACEHOLDER.search(command.text))


def runnable(command: Shown) -> bool:
    return command.text.startswith(("par ", "torchrun ")) and not is_synopsis(command)


def par_help(subcommand: str) -> str:
    from par.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([subcommand, "--help"])
    return out.getvalue()


# -- what the harness finds ------------------------------------------------------------------------


def test_the_harness_finds_the_commands_of_every_page_that_shows_some():
    pages = {command.page for command in all_commands()}
    assert {"README.md", "docs/cost.md", "docs/graphviz.md", "docs/lint.md", "docs/pytorch.md"} <= pages
    runs = [command for command in all_commands() if runnable(command)]
    assert any(command.output for command in runs), "the README's `$ par check` sample"
    assert any(command.text.startswith("torchrun ") for command in runs)


def test_a_skip_marker_leaves_its_block_out_and_needs_a_reason(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: skip (needs a GPU) -->\n```sh\npar check nowhere.par\n```\n\n```\npar cost x.par\n```\n",
        encoding="utf-8",
    )
    assert [command.text for block in blocks(page) for command in block.commands] == ["par cost x.par"]
    page.write_text("<!-- docs-test: skip -->\n```\npar check x.par\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="needs a reason"):
        blocks(page)


# -- checked, not run ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [c for c in all_commands() if is_synopsis(c)], ids=str)
def test_a_synopsis_names_a_real_subcommand_and_real_options(command):
    words = command.text.split()
    help_text = par_help(words[1])
    for option in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", " ".join(words[2:])):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", help_text), f"{command}: par {words[1]} has no {option}"


@pytest.mark.parametrize(
    "command", [c for c in all_commands() if c.text.startswith("python ") and not c.text.startswith("python -")], ids=str
)
def test_a_script_line_names_a_script_that_runs_as_main(command):
    script = ROOT / shlex.split(command.text)[1]
    assert script.is_file(), f"{command}: no such file"
    assert 'if __name__ == "__main__":' in script.read_text(encoding="utf-8"), f"{command}: not a script"


@pytest.mark.parametrize("command", [c for c in all_commands() if c.text.startswith("pip install ")], ids=str)
def test_a_pip_line_installs_this_project_or_its_pinned_torch(command):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {re.split(r"[=<>\[]", dep)[0]: dep for extra in project["optional-dependencies"].values() for dep in extra}
    words = shlex.split(command.text)[2:]
    targets = [word for word in words if not word.startswith("-") and not word.startswith("https://")]
    assert targets, f"{command}: installs nothing"
    for target in targets:
        if target.startswith("."):
            extras = re.fullmatch(r"\.(?:\[(?P<extras>[\w,]+)\])?", target)
            assert extras, f"{command}: {target}"
            for extra in (extras["extras"] or "").split(","):
                assert not extra or extra in project["optional-dependencies"], f"{command}: no extra {extra}"
        else:
            name = re.split(r"[=<>]", target)[0]
            assert pinned.get(name) == target, f"{command}: pyproject.toml pins {pinned.get(name)}"
    if "--index-url" in words:
        assert words[words.index("--index-url") + 1].startswith("https://download.pytorch.org/whl/")


@pytest.mark.parametrize("command", [c for c in all_commands() if c.text.startswith("pytest")], ids=str)
def test_a_pytest_line_runs_this_suite(command):
    assert re.fullmatch(r"pytest -q( -m \"[\w ]+\")?", command.text), str(command)


# -- run -------------------------------------------------------------------------------------------


def workspace(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    return tmp_path


def run(command: Shown, cwd: Path) -> subprocess.CompletedProcess:
    """The command as a user would type it, `par` and `torchrun` being this checkout's."""
    words = shlex.split(command.text)
    program = ["-m", "par"] if words[0] == "par" else ["-m", "torch.distributed.run"]
    return subprocess.run(
        [sys.executable, *program, *words[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )


def check_result(command: Shown, done: subprocess.CompletedProcess) -> None:
    if command.output is None:
        assert done.returncode == 0, f"{command}\nexit {done.returncode}:\n{done.stdout[-3000:]}"
        return
    expected = 1 if re.search(r"^\S+: error: ", command.output, re.M) else 0
    assert done.stdout.rstrip("\n") == command.output.rstrip("\n"), f"{command}: the page shows another output"
    assert done.returncode == expected, str(command)


@pytest.mark.parametrize("command", [c for c in all_commands() if runnable(c) and c.output is not None], ids=str)
def test_a_command_shown_with_its_output_prints_exactly_that(command, tmp_path):
    check_result(command, run(command, workspace(tmp_path)))


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if blocks(page)], ids=lambda page: page.name)
def test_every_command_of_a_page_runs_in_order(page, tmp_path):
    cwd = workspace(tmp_path)
    without_torch = []
    for block in blocks(page):
        for command in block.commands:
            if not runnable(command):
                continue
            if command.text.startswith("torchrun ") and not _has_torch():
                without_torch.append(str(command))
                continue
            check_result(command, run(command, cwd))
    if without_torch:
        pytest.skip(f"torch is not installed: not run: {without_torch}")


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_document_the_docs_cite_exists():
    """Links resolve, and a cited document (`DESIGN.md`: capitals, as README.md) is in the repository.

    Lower-case `.md` names are artifacts `par` writes (`report.md`), not documents."""
    names = {path.name for path in ROOT.glob("*.md")}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        for cited in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text):
            assert cited in names, f"{page.relative_to(ROOT)} cites {cited}, which is not in the repository"
