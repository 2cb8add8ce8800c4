"""model.py under context parallelism: ring and all-gather attention, the load-balanced chunks of
the sequence, held to the unsharded Reference, the DAG's ring and the cost model.

Several deployments of one world size run in one launch (each with its own rendezvous port),
since each launch costs seconds: every rank runs `--check --trace` of each in turn.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from checked_run import compare_traces  # noqa: E402
from fork_launch import free_port, launch, load_module  # noqa: E402
from small_models import compile_small, write_model  # noqa: E402

from par.codegen.pytorch.runtime import context  # noqa: E402

GQA = ["heads=4", "kv_heads=2", "dp=1", "pp=1", "layers=2", "batch=4", "microbatches=2", "seq=16"]
# Four processes each: causal, GQA (4 query heads on 2 KV heads), rope, on gloo in fp32.
FOUR = {
    "cp 4, ring, vocabulary": [*GQA, "tp=1", "cp=4", "vocab=64"],
    "tp 2 x cp 2, ring, sp": [*GQA, "tp=2", "cp=2"],
    "cp 2 x dp 2, allgather, vocabulary": [*GQA, "tp=1", "cp=2", "cp_attention=allgather", "vocab=64", "dp=2"],
    "cp 2 x pp 2, ring, vocabulary": [*GQA, "tp=1", "cp=2", "pp=2", "vocab=64"],
}
# sp: each device's part of the sequence split again over tp; learned positions besides rope
EIGHT = {"tp 2 x cp 4, ring, sp, vocabulary": [*GQA, "tp=2", "cp=4", "vocab=64", "positions=learned"]}
# The merge without its rescaling: each partial output added as if its logsumexp were the merged one.
RESCALE = "out[:, :, rows] * old + part * (part_lse - merged).exp().unsqueeze(-1)"


def _run_all(deployments: dict[str, list[str]], workdir: Path, world: int, mutate=None):
    compiled = {name: compile_small("llama_gqa", defines) for name, defines in deployments.items()}
    paths = {}
    for index, (name, each) in enumerate(compiled.items()):
        assert each.deployment.mesh.world == world, name
        paths[name] = write_model(each, workdir / f"model{index}")
        if mutate is not None:
            source = paths[name].read_text()
            paths[name].write_text(mutate(source))
    ports = {name: free_port() for name in paths}

    def every(argv: list[str]) -> int:
        codes = []
        for index, (name, path) in enumerate(paths.items()):
            os.environ["MASTER_PORT"] = str(ports[name])
            print(f"== {name}", flush=True)
            module = load_module(path, f"model{index}")
            codes.append(module.main(["--check", "--trace", str(path.parent / "trace")]))
        return max(codes)

    results = launch(every, world, [], workdir / "logs", timeout=300)
    report = "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)
    return compiled, paths, results, report


def _held_to_reference_dag_and_cost(deployments, workdir, world):
    compiled, paths, results, report = _run_all(deployments, workdir, world)
    assert all(r.exitcode == 0 for r in results), report
    verdicts = [line for line in results[0].stdout.splitlines() if line.startswith("check: OK")]
    assert len(verdicts) == len(deployments), report
    for name, each in compiled.items():
        compare_traces(each, paths[name].parent / "trace")


@pytest.mark.slow  # four deployments on 4 processes, one launch
def test_four_rank_deployments_match_reference_dag_and_cost_model(workdir):
    _held_to_reference_dag_and_cost(FOUR, workdir, 4)


@pytest.mark.slow  # 8 processes
def test_tp2_cp4_matches_reference_dag_and_cost_model(workdir):
    _held_to_reference_dag_and_cost(EIGHT, workdir, 8)


@pytest.mark.slow  # one launch of 4 processes
def test_a_merge_without_its_rescaling_fails_the_check(workdir):
    def planted(source: str) -> str:
        assert source.count(RESCALE) == 1
        return source.replace(RESCALE, "out[:, :, rows] + part")

    deployments = {"cp 4": FOUR["cp 4, ring, vocabulary"]}
    _, _, results, report = _run_all(deployments, workdir, 4, planted)
    assert [r.exitcode for r in results] == [1, 1, 1, 1], report
    assert "check: MISMATCH" in results[0].stdout, report


# -- In one process: the chunks, their positions and which pairs of them each ring step computes --


@pytest.mark.parametrize("cp", [2, 4])
def test_each_rank_holds_chunks_c_and_2cp_minus_1_minus_c_and_together_all(cp, monkeypatch):
    monkeypatch.setattr(context, "CP", cp)
    seq = 4 * cp
    tokens = torch.arange(seq)
    parts = [context.context_part(tokens, 0, rank) for rank in range(cp)]
    chunk = seq // (2 * cp)
    for rank, part in enumerate(parts):
        assert part[:chunk].tolist() == list(range(rank * chunk, (rank + 1) * chunk))
        assert part[chunk:].tolist() == list(range((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk))
        # the positions rope and learned embeddings use are the tokens' own
        assert torch.equal(context.context_positions(seq // cp, rank, torch.device("cpu")), part)
    assert sorted(torch.cat(parts).tolist()) == tokens.tolist()


@pytest.mark.parametrize("cp", [2, 4])
def test_the_ring_steps_compute_exactly_the_causal_pairs_and_as_many_on_every_rank(cp, monkeypatch):
    """Independent of the code's pairing: the causal pairs (query, key) of the whole sequence,
    from positions alone, equal the union over ring steps of the pairs `_pairs` gives each rank,
    each pair once; every rank computes as many pairs."""
    monkeypatch.setattr(context, "CP", cp)
    seq = 4 * cp
    length = seq // cp
    device = torch.device("cpu")
    computed = []
    work = []
    for rank in range(cp):
        queries = context.context_positions(length, rank, device)
        done = 0
        for step in range(cp):
            origin = (rank - step) % cp
            keys = context.context_positions(length, origin, device)
            rows, columns, causal = context._pairs(rank, origin, length)
            for i, query in enumerate(queries[rows].tolist()):
                for j, key in enumerate(keys[columns].tolist()):
                    if not causal or j <= i:
                        computed.append((query, key))
                        done += 1
        work.append(done)
    assert sorted(computed) == [(q, k) for q in range(seq) for k in range(q + 1)]
    assert len(set(work)) == 1
