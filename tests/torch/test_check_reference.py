"""--check builds the unsharded Reference on rank 0 only; every other rank draws just its stage's layers.

Each rank runs model.py through a wrapper that records every layer `reference_layer` draws (the
only place the reference weights are made). The check must still pass, and still fail on a
planted bug, with rank 0 sending each rank what it compares.
"""

from __future__ import annotations

import ast

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from fork_launch import launch  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

# tp 2 x pp 2, four layers: ranks 0, 1 hold layers 0-1, ranks 2, 3 layers 2-3.
DEPLOYMENT = ("megatron_tp8_pp2", ["tp=2", "pp=2", "layers=4", "batch=4", "microbatches=2"])
REMOVED = "allreduce_mlp = all_reduce(mlp, self.tp_group)"

WRAPPER = """
from pathlib import Path

from fork_launch import load_module

model = load_module(Path({path!r}), "counted_model")
drawn = []
draw = model.reference_layer


def counted(layer, seed):
    drawn.append(layer)
    return draw(layer, seed)


model.reference_layer = counted


def main(argv):
    code = model.main(argv)
    print(f"reference layers drawn: {{sorted(drawn)}}", flush=True)
    return code
"""


def _run(workdir, planted: bool):
    compiled = compile_small(*DEPLOYMENT)
    path = write_model(compiled, workdir)
    if planted:
        source = path.read_text()
        assert source.count(REMOVED) == 1
        path.write_text(source.replace(REMOVED, "allreduce_mlp = mlp"))
    wrapper = workdir / "wrapper.py"
    wrapper.write_text(WRAPPER.format(path=str(path)))
    results = launch(wrapper, 4, ["--check"], workdir / "logs")
    report = "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)
    drawn = {}
    for result in results:
        line = next(line for line in result.stdout.splitlines() if line.startswith("reference layers drawn: "))
        drawn[result.rank] = ast.literal_eval(line.removeprefix("reference layers drawn: "))
    return results, drawn, report


def test_only_rank_0_builds_the_whole_reference_and_the_check_passes(workdir):
    results, drawn, report = _run(workdir, planted=False)
    assert [r.exitcode for r in results] == [0, 0, 0, 0], report
    assert "check: OK" in results[0].stdout, report
    # Rank 0: Reference, every layer once (its stage is sliced from it); the others: their stage's layers.
    assert drawn == {0: [0, 1, 2, 3], 1: [0, 1], 2: [2, 3], 3: [2, 3]}, report


def test_a_planted_bug_still_fails_the_check_on_every_rank(workdir):
    results, drawn, report = _run(workdir, planted=True)
    assert [r.exitcode for r in results] == [1, 1, 1, 1], report
    assert "check: MISMATCH" in results[0].stdout, report
    # the ranks of the last stage (2, 3) compare what rank 0 sent them and find the error
    assert "on rank 2)" in results[0].stdout or "on rank 3)" in results[0].stdout, report
    assert drawn[3] == [2, 3]
