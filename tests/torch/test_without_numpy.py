"""model.py runs where NumPy is not installed (it is no dependency) and says nothing about NumPy:
importing torch warns where NumPy is missing, and the generated file silences exactly that."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fork_launch import free_port
from small_models import compile_small, write_model

# As if NumPy were not installed: `import numpy` fails, so torch's probe for it does too.
NO_NUMPY = "import sys; sys.modules['numpy'] = None"


@pytest.mark.slow  # launches model.py in a fresh process
def test_a_rank_prints_no_numpy_warning_where_numpy_is_missing(workdir):
    pytest.importorskip("torch")
    path = write_model(compile_small("megatron_tp8_pp2", ["tp=1", "pp=1", "layers=1", "batch=4"]), workdir)
    env = dict(
        os.environ, PYTHONWARNINGS="default", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
    )
    plain = subprocess.run([sys.executable, "-c", f"{NO_NUMPY}; import torch"], env=env, capture_output=True, text=True)
    assert "NumPy" in plain.stderr  # torch does warn here, so the run below can show it
    argv = [str(path), "--check"]
    run = f"{NO_NUMPY}; import runpy; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "check: OK" in done.stdout
    assert "NumPy" not in done.stderr, done.stderr
