"""Run a generated model.py (or a function taking its argv) on N local processes, forked from
this one (torch is imported once).

Each rank gets the environment torchrun would give it (RANK, WORLD_SIZE, MASTER_ADDR, ...),
one thread, and its stdout/stderr in files; `launch` returns every rank's exit code and output.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class RankResult:
    rank: int
    exitcode: int | None  # None: still running when the launch gave up on it
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_module(path: Path, name: str = "generated_model"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# What each rank runs: a model.py, whose main(argv) is called, or such a function itself.
Program = Path | Callable[[list[str]], int]


def _rank_main(program: Program, rank: int, world: int, port: int, argv: list[str], logs: str, env: dict) -> None:
    out = os.open(f"{logs}/rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(f"{logs}/rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env,
    )
    torch.set_num_threads(1)
    code = 1
    try:
        main = program if callable(program) else load_module(Path(program)).main
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start(program: Program, world: int, argv: list[str], logs: Path, env: dict | None = None) -> list:
    """Starts the ranks; returns their Process objects (rank order)."""
    logs.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    port = free_port()
    processes = []
    for rank in range(world):
        arguments = (program, rank, world, port, list(argv), str(logs), env or {})
        process = context.Process(target=_rank_main, args=arguments, daemon=True)  # never outlives the test run
        process.start()
        processes.append(process)
    return processes


def collect(processes: list, logs: Path, timeout: float, ranks: list[int] | None = None) -> list[RankResult]:
    """Waits up to `timeout` seconds for the ranks (all, or `ranks`); kills the ones still running."""
    ranks = list(range(len(processes))) if ranks is None else ranks
    deadline = time.monotonic() + timeout
    for rank in ranks:
        processes[rank].join(max(deadline - time.monotonic(), 0))
    results = []
    for rank in ranks:
        process = processes[rank]
        exitcode = process.exitcode
        if exitcode is None:
            process.kill()
            process.join()
        results.append(
            RankResult(rank, exitcode, (logs / f"rank{rank}.out").read_text(), (logs / f"rank{rank}.err").read_text())
        )
    return results


def launch(
    program: Program, world: int, argv: list[str], logs: Path, timeout: float = 120, env: dict | None = None
) -> list[RankResult]:
    return collect(start(program, world, argv, logs, env), logs, timeout)
