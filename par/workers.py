"""Rendering a large spec's artifacts in worker processes, one group of artifacts each.

A build of a large DAG spends most of its time in the renderers (dag.json, dag.dot, the cost
report), which read the compiled DAG and nothing else: forked workers share it with the parent,
copy-on-write, without pickling it. Each worker answers its artifacts' bytes; the parent keeps
them in the order of the jobs, so the files are byte for byte what one process writes.

Forking is used only where it is safe and cheap: on Linux, from a process running a single
thread (a fork copies only the calling thread, and a lock another thread held stays held in the
child). Anywhere else the jobs run in this process, as they do with `jobs=1`.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

# What the forked workers run: set just before they start, read by `_run_group` in the child.
_task: Callable[[int], Any] | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def can_fork() -> bool:
    return sys.platform.startswith("linux") and threading.active_count() == 1


def run_groups(task: Callable[[int], Any], groups: int, workers: int) -> list[Any]:
    """`[task(0), ..., task(groups - 1)]`, computed by up to `workers` forked processes (in this
    process where forking is not safe, or with one worker). Groups are handed out in index
    order as workers free up: give the longest first."""
    global _task
    workers = min(workers, groups)
    if workers <= 1 or not can_fork():
        return [task(index) for index in range(groups)]
    import multiprocessing  # here: a build of small specs starts without them
    from concurrent.futures import ProcessPoolExecutor

    _task = task
    gc.freeze()  # the workers' collections then leave the shared objects' pages unwritten
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_run_group, range(groups)))
    finally:
        _task = None
        gc.unfreeze()


def _run_group(index: int) -> Any:
    assert _task is not None, "run_groups sets the task before it forks"
    return _task(index)


def worker_count(requested: int | None, groups: Sequence[object]) -> int:
    """How many workers to use: `requested`, or one per available CPU, at most one per group."""
    wanted = requested if requested is not None else available_cpus()
    return max(1, min(wanted, len(groups)))
