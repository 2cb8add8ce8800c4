"""A real wheel carries the grammar, the block library and the templates."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = "model m : gpt { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }\nmesh { tp 2 }\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(out), "-q"],
        check=True, capture_output=True, timeout=300,
    )
    (found,) = out.glob("par-*.whl")
    return found


def test_the_wheel_holds_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"grammar/par.lark", "dsl/library/blocks.par", "dsl/cli.py", "codegen/templating.py"} <= names
    assert any(name.startswith("templates/") for name in names)


def test_installed_wheel_checks_a_spec_from_another_directory(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # System site packages provide lark, jinja2 and networkx; par itself comes from the wheel.
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.par").write_text(SPEC)
    located = subprocess.run(
        [python, "-c", "import dsl, grammar; print(dsl.__file__); print(grammar.__file__)"],
        capture_output=True, text=True, cwd=work, check=True,
    ).stdout.split()
    assert all(str(env_dir) in path for path in located), located
    result = subprocess.run([env_dir / "bin" / "par", "check", "m.par"], capture_output=True, text=True, cwd=work, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "m.par: ok" in result.stdout
