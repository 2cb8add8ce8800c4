"""The GPU check (tests/gpu/gpu_check.py): its plan, builds and runner on CPU; the check itself with CUDA."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from par.cli import main as par
from par.codegen import svg

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("gpu_check", HERE / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
_spec.loader.exec_module(gpu_check)


def _cuda_gpus() -> int:
    return gpu_check.cuda_gpus()


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
def test_every_shipped_spec_is_planned_in_fp16_and_bf16_on_a_world_that_fits(gpus):
    planned = gpu_check.builds(gpus)
    specs = sorted(path.stem for path in (HERE.parents[1] / "specs").glob("*.par") if gpu_check.checked(path))
    assert "mixtral_8x7b" not in specs and "llama_gqa" in specs
    assert sorted({(b.spec, b.dtype) for b in planned}) == sorted((s, d) for s in specs for d in ("fp16", "bf16"))
    for build in planned:
        assert build.world == (1 if gpus == 1 else 2 if gpus < 4 else 4)
        defines = dict(define.split("=", 1) for define in build.defines)
        assert int(defines["tp"]) * int(defines["pp"]) * int(defines["dp"]) == build.world
        assert defines["dtype"] == build.dtype


def test_no_gpu_is_refused_with_a_message(capsys):
    assert gpu_check.main(["--gpus", "0", "--build-only"]) == 2
    assert "needs at least 1 CUDA GPU, found 0" in capsys.readouterr().err
    if _cuda_gpus() < 64:
        assert gpu_check.main(["--gpus", "64"]) == 2
        assert "--gpus 64, but this machine has" in capsys.readouterr().err


def test_a_model_with_a_vocabulary_also_generates(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("HIDDEN = 64\n")
    assert gpu_check.modes(model) == gpu_check.MODES
    model.write_text("HIDDEN = 64\nVOCAB = 99  # rows of the embedding\n")
    assert gpu_check.modes(model) == (*gpu_check.MODES, gpu_check.GENERATE)


def test_world_size_is_read_from_the_constants():
    assert gpu_check.world_size("TP = 2  # tensor\nPP = 3  # stages\nDP = 2\nWORLD_SIZE = TP * PP * DP\n") == 12


def _par_in_process(run):
    """subprocess.run, but `python -m par ...` runs par's main in this process: these tests are
    about the plan and its builds, not about starting Python (the docs and CLI tests do that)."""

    def running(command, **options):
        if command[:3] != [sys.executable, "-m", "par"]:
            return run(command, **options)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = par(command[3:])
        return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())

    return running


@pytest.mark.slow
@pytest.mark.parametrize("gpus", [2, 4])
def test_every_planned_build_compiles_for_the_gpu_count(gpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.subprocess, "run", _par_in_process(subprocess.run))
    monkeypatch.setattr(svg, "dot_program", lambda: None)  # model.py is the point: no Graphviz layout
    assert gpu_check.main(["--gpus", str(gpus), "--build-only", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(gpu_check.builds(gpus))
    assert all(re.fullmatch(rf"gpu-check \S+ (fp16|bf16) build: OK, {min(gpus, 4)} processes", line) for line in lines)


@pytest.mark.slow
def test_the_runner_reports_a_passing_run_and_a_timeout(tmp_path):
    # a tiny fp32 build runs on CPU with gloo: the same torchrun command the GPU runs use
    spec = gpu_check.Build("megatron_tp8_pp2", "fp32", (*gpu_check.TINY, "tp=2", "pp=1", "layers=2", "dtype=fp32"), 2)
    model = gpu_check.build(spec, tmp_path)
    code, seconds, last = gpu_check.execute(model, 2, ("--check",), timeout=120)
    assert code == 0, last
    assert gpu_check.summary(spec, ("--check",), code, seconds, last).startswith(
        "gpu-check megatron_tp8_pp2 fp32 --check: OK, "
    )
    assert "check: OK" in last
    code, seconds, last = gpu_check.execute(model, 2, ("--steps", "100000"), timeout=3)
    assert code is None and seconds < 60
    assert ": TIMEOUT, " in gpu_check.summary(spec, ("--steps", "100000"), code, seconds, last)


@pytest.mark.slow
@pytest.mark.skipif(_cuda_gpus() < 1, reason="needs a CUDA GPU")
def test_gpu_check_passes_on_this_machine(capsys):
    code = gpu_check.main([])
    out = capsys.readouterr().out
    assert code == 0, out
