"""Rendering artifacts in several processes: forked workers, and this one.

A build spends most of its time in the renderers (dag.json, dag.dot, the cost report, the
Graphviz drawings), which read the compiled DAGs and nothing else: forked workers share them
with the parent, copy-on-write, without pickling them. Each worker answers its artifacts' bytes;
the parent keeps them in the order of the jobs, so the files are byte for byte what one process
writes. A large spec's artifacts are split by cost between this process and the workers
(`run_tasks`); the artifacts of many small specs go to whichever worker is free (`run_each`),
since a Graphviz layout's time is known only roughly.

Forking is used only where it is safe and cheap: on Linux, from a process running a single
thread (a fork copies only the calling thread, and a lock another thread held stays held in the
child). Anywhere else the jobs run in this process, as they do with `jobs=1`.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Executor

# What the forked workers run: set just before they start, read by `_run_share` in the child.
_task: Callable[[int], Any] | None = None
_in_worker = False


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def can_fork() -> bool:
    return sys.platform.startswith("linux") and threading.active_count() == 1


def run_tasks(task: Callable[[int], Any], costs: Sequence[float], processes: int) -> list[Any]:
    """`[task(0), ..., task(n - 1)]` for the n tasks whose relative `costs` are given, computed by
    up to `processes` processes: the tasks are split into shares of about the same cost (the
    longest placed first, each where the least work is yet); this process computes the first,
    whose answers need no passing back, and `processes - 1` forked workers the others.
    `processes` is `worker_count`'s, 1 where forking is not safe: then every task runs here, in
    index order."""
    shares = balanced(costs, processes)
    if len(shares) <= 1:
        return [task(index) for index in range(len(costs))]
    answers: dict[int, Any] = {}
    with _forked(task, len(shares) - 1) as pool:
        futures = [pool.submit(_run_share, share) for share in shares[1:]]
        answers.update((index, task(index)) for index in shares[0])
        for share, future in zip(shares[1:], futures, strict=True):
            answers.update(zip(share, future.result(), strict=True))
    return [answers[index] for index in range(len(costs))]


def run_each(task: Callable[[int], Any], costs: Sequence[float], processes: int) -> list[Any]:
    """`[task(0), ..., task(n - 1)]`, computed by up to `processes` forked workers, each task
    handed to the next worker free, the costliest first: a worker whose tasks took less than
    their `costs` said takes more. This process only waits. `processes` is `worker_count`'s; with
    1 every task runs here, in index order."""
    if processes <= 1 or len(costs) <= 1:
        return [task(index) for index in range(len(costs))]
    with _forked(task, min(processes, len(costs))) as pool:
        futures = {index: pool.submit(_run_share, [index]) for index in sorted(range(len(costs)), key=lambda index: -costs[index])}
        return [futures[index].result()[0] for index in range(len(costs))]


@contextmanager
def _forked(task: Callable[[int], Any], workers: int) -> Iterator[Executor]:
    """A pool of `workers` processes forked from this one, which run `task` (`_run_share`)."""
    global _task
    import multiprocessing  # here: a build of small specs starts without them
    from concurrent.futures import ProcessPoolExecutor

    _task = task
    gc.freeze()  # the workers' collections then leave the shared objects' pages unwritten
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            yield pool
    finally:
        _task = None
        gc.unfreeze()


def balanced(costs: Sequence[float], processes: int) -> list[list[int]]:
    """The task indices split into at most `processes` shares of about the same total cost,
    each share in index order; none empty."""
    shares: list[list[int]] = [[] for _ in range(max(1, min(processes, len(costs))))]
    totals = [0.0] * len(shares)
    for index in sorted(range(len(costs)), key=lambda index: -costs[index]):
        least = totals.index(min(totals))
        shares[least].append(index)
        totals[least] += costs[index]
    return [sorted(share) for share in shares if share]


def in_worker() -> bool:
    """Whether this is a forked worker (what it answers is passed back)."""
    return _in_worker


def _run_share(share: list[int]) -> list[Any]:
    global _in_worker
    assert _task is not None, "the task is set before the workers fork"
    _in_worker = True
    return [_task(index) for index in share]


def worker_count(requested: int | None, tasks: int) -> int:
    """How many processes to use: `requested`, or one per available CPU, at most one per task;
    1 where forking is not safe."""
    if not can_fork():
        return 1
    wanted = requested if requested is not None else available_cpus()
    return max(1, min(wanted, tasks))
