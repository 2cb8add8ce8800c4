"""The whole model (token ids in, cross-entropy out) run with gloo: --check against Reference at
every layout, the DAG's collectives, the cost model's bytes; training on a token file;
generation with the KV cache against Reference at several layouts; and a mutant that --check catches."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from checked_run import run_and_compare  # noqa: E402
from fork_launch import launch  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

# vocab 101: padded to 102 at tp 2; the llama block (RMSNorm, so an RMSNorm final norm)
SPEC = """
model m : llama { layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  batch 8  seq 16  vocab 101  dtype fp32 }
mesh { tp 2  pp 2  dp 2  microbatches 2 }
"""
LAYOUTS = {
    "tp1": ["tp=1", "pp=1", "dp=1"],
    "tp2": ["pp=1", "dp=1"],
    "tp2 sp": ["pp=1", "dp=1", "sp=on"],
    "tp2 bf16": ["pp=1", "dp=1", "dtype=bf16"],  # the loss's AllReduces stay fp32, as the DAG says
    "tp2 x pp2": ["dp=1"],
    "tp2 x pp2 sp, tied, learned positions": ["dp=1", "sp=on", "tie_embeddings=true", "positions=learned"],
    "tp2 x pp2 x dp2": [],
    "tp2 x pp2 x dp2 sp, tied": ["sp=on", "tie_embeddings=true"],
    "tp1 x pp2, tied, gpt block": ["tp=1", "dp=1", "tie_embeddings=true", "positions=learned", "final_norm=layernorm"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_passes_and_the_collectives_are_the_dags(layout, workdir):
    compiled = compile_source(SPEC, *LAYOUTS[layout])
    if compiled.deployment.mesh.world == 1:  # no collective to trace
        assert "check: OK" in _run(compiled, workdir, "--check")[0].stdout
    else:
        run_and_compare(compiled, workdir)


def _run(compiled, workdir, *argv: str) -> list:
    results = launch(write_model(compiled, workdir), compiled.deployment.mesh.world, list(argv), workdir / "logs")
    assert all(r.exitcode == 0 for r in results), "\n".join(r.stdout + r.stderr for r in results)
    return results


def test_generation_is_references_at_every_layout(workdir):
    """Same seed, same weights: at every layout (sequence parallelism in the prefill, microbatches
    in flight through two stages, two replicas) generation with the KV cache gives Reference's
    tokens, and every step's logits within 1e-5 of Reference's, which computes every step anew.
    Seeded sampling among the top k (each rank's k largest gathered over tp) draws the same
    tokens at every layout. (Greedy generation: tests/hf/test_generation_matches_transformers.py.)"""
    found = set()
    for index, defines in enumerate((LAYOUTS["tp1"], LAYOUTS["tp2 sp"], ["sp=on"])):  # the last: tp2 x pp2 x dp2 sp
        argv = ["--check", "--generate", "5 7 11 13", "--max-new", "6", "--temperature", "0.9", "--top-k", "7"]
        results = _run(compile_source(SPEC, *defines), workdir / str(index), *argv)
        assert "check generate: OK" in results[0].stdout, results[0].stdout
        (line,) = [line for result in results for line in result.stdout.splitlines() if line.startswith("generated:")]
        found.add(line)
    assert len(found) == 1


def test_training_on_a_token_file_learns_its_pattern(workdir):
    """A file repeating 0 1 2 ... 9: the loss falls far below that of a uniform guess, ln 101."""
    data = workdir / "tokens.bin"
    data.write_bytes(b"".join((i % 10).to_bytes(4, "little") for i in range(5000)))
    compiled = compile_source(SPEC, "dp=1", "sp=on")
    results = _run(compiled, workdir, "--data", str(data), "--data-dtype", "int32", "--steps", "30", "--lr", "1e-2")
    lines = [line for line in results[2].stdout.splitlines() if line.startswith("step ")]  # rank 2: the last stage
    first, last = (float(line.split("loss ")[1].split(",")[0]) for line in (lines[0], lines[-1]))
    assert first > 4 and last < 1.0, lines
    assert "tokens/s" in lines[-1]


def test_check_catches_a_mutant_that_skips_the_max_allreduce(workdir):
    compiled = compile_source(SPEC, "pp=1", "dp=1")
    path = write_model(compiled, workdir)
    text = path.read_text()
    path.write_text(text.replace("_all_reduce(largest, group, op=dist.ReduceOp.MAX)", "pass"))
    results = launch(path, 2, ["--check"], workdir / "logs")
    assert results[0].exitcode == 1
    assert "check: MISMATCH" in results[0].stdout
