"""model.py and its runtime pass ruff and mypy: every shipped spec (small, as the distributed tests
run them), every golden spec, every extra block, and the runtime modules themselves. And model.py
holds no statement that cannot run: the runtime is folded on the spec's constants, and a branch
that returns must not leave the code after it behind."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from small_models import BLOCKS, ROOT, VARIANTS, compile_source, write_model

from par.dsl.compiler import compile_file

GOLDEN = ROOT / "tests" / "golden" / "specs"
RUNTIME = ROOT / "codegen" / "pytorch" / "runtime"
CONFIG = str(ROOT / "pyproject.toml")
# The project's configuration, and more for generated code: it is held to 120 columns (the
# hand-written code is not; pyproject.toml says why) and to ruff's simplifications.
RUFF = ["check", "--no-cache", "--config", CONFIG, "--extend-select", "E501,SIM"]
MYPY = ["--config-file", CONFIG, "--no-error-summary"]


def _tool(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def checked(module_dir, variant_models) -> Path:
    """One folder: every model.py under a name of its own (mypy needs distinct module names), and
    the runtime package as an installed tree, par/codegen/pytorch/runtime/."""
    folder = module_dir / "checked"
    (folder / "models").mkdir(parents=True)
    for index, ((stem, _), path) in enumerate(zip(VARIANTS, variant_models, strict=True)):
        shutil.copyfile(path, folder / "models" / f"model_{stem}_{index}.py")
    models = []
    with contextlib.chdir(ROOT):  # as regen builds them: the banner names the spec relative to the checkout
        models += [(path.stem, compile_file(path.relative_to(ROOT))) for path in sorted(GOLDEN.glob("*.par"))]
    models += [(f"block_{index}", compile_source(text)) for index, text in enumerate(BLOCKS.values())]
    for name, compiled in models:
        path = write_model(compiled, module_dir / name)
        shutil.copyfile(path, folder / "models" / f"model_{name}.py")
    package = folder / "tree" / "par" / "codegen" / "pytorch"
    shutil.copytree(RUNTIME, package / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    for level in (package.parents[1], package.parent, package):
        (level / "__init__.py").write_text("")
    return folder


@pytest.mark.slow
def test_model_py_and_the_runtime_pass_ruff(checked):
    _tool("ruff")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", *RUFF, "models", "tree"],
        cwd=checked,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_model_py_and_the_runtime_pass_mypy(checked):
    _tool("mypy")
    # The checkout's cache, which .ci/typecheck uses too: torch's stubs, most of the work, are
    # read once per checkout; mypy checks every file it caches against its hash before reuse.
    cache = ["--cache-dir", str(ROOT / ".mypy_cache")]
    models = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY, *cache, "models"], cwd=checked, capture_output=True, text=True
    )
    assert models.returncode == 0, models.stdout + models.stderr
    runtime = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY, *cache, "-p", "par.codegen.pytorch.runtime"],
        cwd=checked / "tree",
        capture_output=True,
        text=True,
    )
    assert runtime.returncode == 0, runtime.stdout + runtime.stderr


def unreachable(text: str) -> list[int]:
    """Lines of statements that follow a `return`, `raise`, `continue` or `break` in their block."""
    ends = ast.Return | ast.Raise | ast.Continue | ast.Break
    lines = []
    for node in ast.walk(ast.parse(text)):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                lines += [after.lineno for before, after in itertools.pairwise(block) if isinstance(before, ends)]
    return lines


def test_unreachable_finds_code_after_a_return():
    assert unreachable("def f(x):\n    if x:\n        return 1\n        x += 1\n    return x\n") == [4]
    assert unreachable("def f(x):\n    if x:\n        return 1\n    return x\n") == []


def test_golden_model_py_has_no_unreachable_code():
    for path in sorted((ROOT / "tests" / "golden").glob("*/model.py")):
        assert unreachable(path.read_text()) == [], path


@pytest.mark.slow
def test_model_py_has_no_unreachable_code(checked):
    for path in sorted((checked / "models").glob("*.py")):
        assert unreachable(path.read_text()) == [], path.name
