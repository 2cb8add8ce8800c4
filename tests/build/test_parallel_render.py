"""A large spec's artifacts render in worker processes: the same bytes, in the same order, with
the same warnings, notices and failures as in one process."""

import os
import threading

import pytest

from par import build as driver
from par import workers
from par.cli import main
from par.codegen.artifacts import artifact_groups, group_cost, made_with
from par.codegen.renderer import ArtifactError, Skip
from par.dsl import compiler
from par.dsl.compiler import compile_text
from par.dsl.dag.compact import CompactDag

SPEC = (
    "model m : gpt { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }\n"
    "mesh { tp 2  pp 2  microbatches 2 }\n"
)
linux_only = pytest.mark.skipif(not workers.can_fork(), reason="workers fork on Linux only")


@pytest.fixture
def small_is_large(monkeypatch):
    """Every DAG counts as large, so a small spec renders in workers."""
    monkeypatch.setattr(driver, "PARALLEL_MIN_NODES", 0)


@pytest.fixture(scope="module")
def compiled():
    return compile_text(SPEC, "m.par")


def pid_renderer(compiled):
    return f"{os.getpid()}\n"


SERVING = (
    "model m : gpt { layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 16  dtype fp32 }\n"
    "mesh { tp 2  pp 2  microbatches 2 }\nserve { prompt 8  generate 4 }\nhardware h100\n"
)


@linux_only
@pytest.mark.parametrize("spec", [SPEC, SERVING], ids=["training", "serving"])
def test_workers_write_what_one_process_writes(spec, tmp_path, small_is_large):
    compiled = compile_text(spec, "m.par")
    renderers = driver.artifact_renderers("none")
    alone = driver.render(compiled, tmp_path, renderers, jobs=1)
    shared = driver.render(compiled, tmp_path, renderers, jobs=2)
    assert len(shared.artifacts) >= 5
    assert any(a.path.name == "dag.decode.json" for a in shared.artifacts) == (spec is SERVING)
    assert [(a.path, a.content) for a in shared.artifacts] == [(a.path, a.content) for a in alone.artifacts]
    assert shared.notices == alone.notices and shared.warnings == alone.warnings


@linux_only
def test_a_large_dag_renders_in_this_and_other_processes_and_a_small_one_here(compiled, tmp_path, monkeypatch):
    renderers = [("a.txt", pid_renderer), ("b.txt", pid_renderer), ("c.txt", pid_renderer)]
    here = f"{os.getpid()}\n".encode()
    small = driver.render(compiled, tmp_path, renderers, jobs=2)
    assert [a.content for a in small.artifacts] == [here] * 3
    monkeypatch.setattr(driver, "PARALLEL_MIN_NODES", 0)
    large = driver.render(compiled, tmp_path, renderers, jobs=3)
    assert [a.path.name for a in large.artifacts] == ["a.txt", "b.txt", "c.txt"]
    pids = [a.content for a in large.artifacts]
    assert here in pids and len(set(pids)) >= 2  # this process takes a share, the workers the rest
    assert {a.content for a in driver.render(compiled, tmp_path, renderers, jobs=1).artifacts} == {here}


def test_shares_of_about_the_same_cost_longest_first():
    assert workers.balanced([3.0, 3.1, 2.5, 2.0, 1.0, 0.1], 2) == [[1, 3, 4], [0, 2, 5]]
    assert workers.balanced([1.0, 1.0, 1.0], 5) == [[0], [1], [2]]
    assert workers.balanced([5.0, 1.0, 1.0], 1) == [[0, 1, 2]]
    assert workers.balanced([], 4) == []
    shares = workers.balanced([float(cost) for cost in range(1, 21)], 4)
    assert sorted(index for share in shares for index in share) == list(range(20))
    totals = [sum(index + 1 for index in share) for share in shares]
    assert all(abs(total - 210 / 4) < 20 for total in totals)  # within the longest task of even
    assert sorted(next(n for n, share in enumerate(shares) if index in share) for index in (16, 17, 18, 19)) == [0, 1, 2, 3]


@linux_only
def test_no_fork_while_another_thread_runs(compiled, tmp_path, small_is_large):
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        rendered = driver.render(compiled, tmp_path, [("a.txt", pid_renderer), ("b.txt", pid_renderer)], jobs=2)
    finally:
        stop.set()
        other.join()
    assert {a.content for a in rendered.artifacts} == {f"{os.getpid()}\n".encode()}


def raises(compiled):
    return 1 / 0


def fails_outside(compiled):
    raise ArtifactError("dot timed out")


def skips(compiled):
    return Skip("nothing to draw here")


@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=linux_only)])
def test_warnings_notices_and_bugs_come_back_from_the_workers(compiled, tmp_path, small_is_large, jobs):
    renderers = [("fine.txt", pid_renderer), ("dag.svg", fails_outside), ("other.txt", skips)]
    rendered = driver.render(compiled, tmp_path, renderers, jobs=jobs)
    assert [a.path.name for a in rendered.artifacts] == ["fine.txt"]
    assert rendered.warnings == ["dag.svg not written: dot timed out"]
    assert rendered.notices == ["nothing to draw here"]
    with pytest.raises(driver.RenderError) as failed:
        driver.render(compiled, tmp_path, [*renderers, ("bug.txt", raises)], jobs=jobs)
    assert str(failed.value) == "cannot render bug.txt: ZeroDivisionError: division by zero"
    assert "Traceback" in failed.value.details and "in raises" in failed.value.details


def test_artifacts_made_from_one_computation_render_together():
    names = ["dag.json", "dag.dot", "dag.compact.dot", "dag.svg", "dag.compact.svg", "model.py", "report.md", "timeline.svg"]
    groups = artifact_groups(names)
    assert [[names[index] for index in group] for group in groups] == [
        ["dag.json"],
        ["dag.dot", "dag.svg"],
        ["dag.compact.dot", "dag.compact.svg"],
        ["model.py"],
        ["report.md", "timeline.svg"],
    ]
    assert made_with("dag.decode.compact.svg") == "dag.decode.compact.dot"
    assert made_with("timeline.svg") == "report.md" and made_with("model.py") == "model.py"
    assert group_cost(names, groups[1]) > group_cost(names, groups[0]) > group_cost(names, groups[3])


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_jobs_must_be_a_number_of_processes(value, tmp_path, specs, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["build", str(specs), "-o", str(tmp_path / "out"), f"--jobs={value}"])
    assert exit.value.code == 2
    assert f"argument -j/--jobs: '{value}' is not a number of processes (1 or more)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def cut_one_edge(monkeypatch):
    """Expansion that drops an edge into the first layer's residual add: a DAG the validator refuses."""
    real = compiler.expand

    def expand(*args):
        graph = real(*args).to_dag()
        graph.remove_edge(*graph.in_edges("layer_0_h_gpu0")[0])
        return CompactDag.of(graph)

    monkeypatch.setattr(compiler, "expand", expand)


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=linux_only)])
def test_a_dag_that_fails_validation_while_it_renders_writes_nothing(specs, tmp_path, par, monkeypatch, small_is_large, jobs):
    cut_one_edge(monkeypatch)
    drawn = []
    real = driver.artifact_renderers

    def renderers(svg):
        return [(name, lambda compiled, renderer=renderer, name=name: drawn.append(name) or renderer(compiled)) for name, renderer in real(svg)]

    monkeypatch.setattr(driver, "artifact_renderers", renderers)
    code, _, err = par("build", specs, "-o", tmp_path / "out", "--svg", "none", "-j", jobs)
    assert code == 1
    assert "gpt_tp2_pp2.par" in err and "DAG invariant" in err and "layer_0_h_gpu0" in err and "Traceback" not in err
    assert "nothing was written" in err and not (tmp_path / "out").exists()
    if jobs == "1":
        assert drawn == []  # in one process the proof comes first: nothing is rendered from a bad DAG


def test_a_build_validates_each_dag_once(specs, tmp_path, par, monkeypatch):
    calls = []
    real = compiler.validate
    monkeypatch.setattr(compiler, "validate", lambda graph: calls.append(len(graph)) or real(graph))
    assert par("build", specs, "-o", tmp_path / "out", "--svg", "none")[0] == 0
    assert len(calls) == 2 and all(calls)


@linux_only
def test_large_files_come_back_through_temporary_files_that_are_removed(compiled, tmp_path, small_is_large, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setattr(driver, "SPILL_BYTES", 1)
    renderers = driver.artifact_renderers("none")
    spilled = driver.render(compiled, tmp_path, renderers, jobs=2)
    monkeypatch.setattr(driver, "SPILL_BYTES", 1 << 40)
    piped = driver.render(compiled, tmp_path, renderers, jobs=2)
    assert [(a.path, a.content) for a in spilled.artifacts] == [(a.path, a.content) for a in piped.artifacts]
    assert list(scratch.iterdir()) == []


@pytest.fixture
def side_by_side(monkeypatch):
    """Any batch renders in workers, however few its nodes."""
    monkeypatch.setattr(driver, "SIDE_BY_SIDE_MIN_NODES", 0)


@linux_only
def test_specs_side_by_side_write_what_one_process_writes(tmp_path, side_by_side):
    specs = [compile_text(SPEC, "a.par", defer_proof=True), compile_text(SERVING, "b.par", defer_proof=True)]
    renderers = driver.artifact_renderers("none")
    alone = [driver.render(compiled, tmp_path, renderers, jobs=1) for compiled in [compile_text(SPEC, "a.par"), compile_text(SERVING, "b.par")]]
    shared = driver.render_side_by_side(specs, tmp_path, renderers, jobs=2)
    assert all(compiled.proven for compiled in specs)  # the workers' proofs, in this process's copies
    for together, apart in zip(shared, alone, strict=True):
        assert isinstance(together, driver.Rendered)
        assert [(a.path, a.content) for a in together.artifacts] == [(a.path, a.content) for a in apart.artifacts]
        assert together.notices == apart.notices


@linux_only
def test_specs_side_by_side_render_in_workers_and_small_ones_here(compiled, tmp_path, side_by_side, monkeypatch):
    renderers = [("a.txt", pid_renderer), ("b.txt", pid_renderer)]
    here = f"{os.getpid()}\n".encode()
    apart = driver.render_side_by_side([compiled, compiled], tmp_path, renderers, jobs=2)
    pids = {a.content for each in apart for a in each.artifacts}
    assert here not in pids and 1 <= len(pids) <= 2  # this process waits for the workers
    monkeypatch.setattr(driver, "SIDE_BY_SIDE_MIN_NODES", 10**9)
    together = driver.render_side_by_side([compiled, compiled], tmp_path, renderers, jobs=2)
    assert {a.content for each in together for a in each.artifacts} == {here}


@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=linux_only)])
def test_a_spec_side_by_side_fails_alone(tmp_path, side_by_side, monkeypatch, jobs):
    """One spec's bad DAG or buggy renderer is its own result; the other specs render."""
    good = compile_text(SPEC, "good.par", defer_proof=True)
    bad = compile_text(SPEC, "bad.par", defer_proof=True)
    graph = bad.compact.to_dag()
    graph.remove_edge(*graph.in_edges("layer_0_h_gpu0")[0])
    bad.compact = CompactDag.of(graph)

    def raises_on_bad(compiled):
        return 1 / 0 if compiled.deployment.file == "bad.par" else "fine\n"

    results = driver.render_side_by_side([good, bad], tmp_path, [("a.txt", pid_renderer), ("b.txt", raises_on_bad)], jobs=jobs)
    assert isinstance(results[0], driver.Rendered) and [a.path.name for a in results[0].artifacts] == ["a.txt", "b.txt"]
    assert isinstance(results[1], driver.Unproven)  # the proof's verdict, whatever the renderers did
    assert "layer_0_h_gpu0" in "\n".join(d.message for d in results[1].diagnostics)
    good = compile_text(SPEC, "good.par", defer_proof=True)
    bad = compile_text(SPEC, "bad.par", defer_proof=True)
    results = driver.render_side_by_side([good, bad], tmp_path, [("a.txt", pid_renderer), ("b.txt", raises_on_bad)], jobs=jobs)
    assert isinstance(results[0], driver.Rendered)
    assert isinstance(results[1], driver.RenderError) and str(results[1]) == "cannot render b.txt: ZeroDivisionError: division by zero"


@linux_only
def test_each_task_runs_in_a_worker_and_comes_back_in_order():
    answers = workers.run_each(lambda index: (index, os.getpid()), [1.0, 5.0, 2.0, 4.0], 2)
    assert [index for index, _ in answers] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid in answers}
    assert workers.run_each(lambda index: (index, os.getpid()), [1.0, 5.0], 1) == [(0, os.getpid()), (1, os.getpid())]


def test_a_full_drawing_of_a_small_dag_costs_its_layout():
    names = ["dag.json", "dag.svg", "dag.compact.svg"]
    assert group_cost(names, [1], 7_000) > 100 * group_cost(names, [0], 7_000)  # Graphviz, not an emitter
    assert group_cost(names, [1], 80_000) < group_cost(names, [0], 80_000) * 10  # not drawn above FULL_SVG_MAX_NODES
    assert group_cost(names, [0], 2_000) == 2 * group_cost(names, [0], 1_000)


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=linux_only)])
def test_a_build_of_several_specs_writes_the_same_files_whatever_the_jobs(specs, tmp_path, par, side_by_side, jobs):
    code, _, err = par("build", specs, "-o", tmp_path / "out", "--svg", "none", "-j", jobs)
    assert code == 0 and "Traceback" not in err
    code, _, err = par("build", specs, "-o", tmp_path / "out", "--svg", "none", "--check", "-j", "1" if jobs == "2" else "2")
    assert code == 0, err
