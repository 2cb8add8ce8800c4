"""A real wheel carries the grammar, the block library and the templates."""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = "model m : gpt { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }\nmesh { tp 2 }\n"


pytestmark = pytest.mark.slow  # builds a wheel and a venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(out), "-q"],
        check=True, capture_output=True, timeout=300,
    )
    (found,) = out.glob("par_compiler-*.whl")
    return found


def test_the_wheel_holds_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"par"}
    assert {"par/grammar/par.lark", "par/dsl/frontend/library/blocks.par", "par/dsl/frontend/library/blocks.parsed", "par/cli.py",
            "par/codegen/templating.py", "par/templates/model.py.jinja", "par/templates/templates.bytecode",
            "par/codegen/pytorch/runtime/pipeline.py", "par/codegen/pytorch/runtime/outlines.json"} <= names  # model.py's runtime, read as text


def running_site_packages() -> list[str]:
    """The folders the running interpreter imports installed packages from (a venv's, the system's)."""
    return [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages") and Path(path).is_dir()]


def test_installed_wheel_checks_a_spec_from_another_directory(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # lark, jinja2 and networkx come from wherever the tests run (the system or a venv, which
    # `system_site_packages` would miss): a .pth file adds those folders after the venv's own,
    # as plain paths, so their .pth files (an editable par among them) stay inactive.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True
    ).stdout.strip()
    Path(purelib, "running_env.pth").write_text("\n".join(running_site_packages()) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # par from the wheel only
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=300, env=env)
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.par").write_text(SPEC)
    located = subprocess.run(
        [python, "-c", "import par.dsl, par.grammar; print(par.dsl.__file__); print(par.grammar.__file__)"],
        capture_output=True, text=True, cwd=work, check=True, env=env,
    ).stdout.split()
    assert all(str(env_dir) in path for path in located), located
    result = subprocess.run([env_dir / "bin" / "par", "check", "m.par"], capture_output=True, text=True, cwd=work, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "m.par: ok" in result.stdout
