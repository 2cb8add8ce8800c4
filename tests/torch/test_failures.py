"""Failures end every rank: a wrong number of processes, a killed rank, a rank that hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from fork_launch import collect, launch, start  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

# tp 2 x pp 2: a killed rank leaves peers in its tensor-parallel group and in the other stage.
TP2_PP2 = ["tp=2", "layers=4", "batch=4"]
BOUND = 60  # seconds the other ranks get to exit; generous, not a speed target


@pytest.fixture(scope="module")
def model(module_dir):
    return write_model(compile_small("baseline_tp8_pp2", TP2_PP2), module_dir)


def test_wrong_world_size_is_a_clear_error_before_any_collective(model, workdir):
    results = launch(model, 3, ["--check"], workdir, timeout=BOUND)
    for result in results:
        assert result.exitcode == 2
        assert "runs on 4 processes (tp 2 x pp 2 x dp 1), but 3 were launched" in result.stderr
        assert "torchrun --nproc-per-node 4 model.py" in result.stderr
        assert "Traceback" not in result.stderr


def test_plain_python_without_torchrun_is_refused(model):
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    done = subprocess.run([sys.executable, str(model)], capture_output=True, text=True, env=env, timeout=BOUND)
    assert done.returncode == 2
    assert "but 1 was launched; run: torchrun --nproc-per-node 4 model.py" in done.stderr


def _wait_for(path, text, timeout):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"no '{text}' in {path}"
        time.sleep(0.05)


def _stop_one_rank(model, workdir, how, timeout_s):
    processes = start(model, 4, ["--steps", "1000000", "--timeout", str(timeout_s)], workdir)
    try:
        _wait_for(workdir / "rank2.out", "step 3/", BOUND)  # rank 2: first rank of the last stage
        os.kill(processes[1].pid, how)
        started = time.monotonic()
        results = collect(processes, workdir, BOUND, ranks=[0, 2, 3])
        return results, time.monotonic() - started
    finally:
        for process in processes:
            process.kill()
            process.join()


def test_a_killed_rank_makes_the_others_exit_with_an_error(model, workdir):
    results, elapsed = _stop_one_rank(model, workdir, signal.SIGKILL, timeout_s=300)
    assert all(result.exitcode == 1 for result in results), [r.exitcode for r in results]
    assert all("error" in result.stderr for result in results)
    assert elapsed < BOUND  # a peer's lost connection fails at once: no process-group timeout


def test_a_hung_rank_makes_the_others_time_out(model, workdir):
    results, elapsed = _stop_one_rank(model, workdir, signal.SIGSTOP, timeout_s=10)
    assert all(result.exitcode == 1 for result in results), [r.exitcode for r in results]
    assert any("Timed out" in result.stderr for result in results)
    assert elapsed < BOUND
