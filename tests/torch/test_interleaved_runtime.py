"""model.py under the interleaved schedule, run on CPU with gloo in one launch: every rank's
outputs and gradients equal Reference's, and its Send/Recv and collectives are the DAG's."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on four processes

from checked_run import run_and_compare  # noqa: E402
from small_models import compile_small  # noqa: E402


def test_tp2_pp2_with_two_chunks_matches_reference_and_the_dag(workdir):
    """Sequence parallel, GQA, a tied vocabulary with learned positions: the embedding runs on
    chunk 0 and the head on the last chunk, both of them on their own stage; 4 microbatches, so
    the schedule has its steady phase (with m = p it is all warm-up on the first stage)."""
    defines = ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=4", "vocab=63",
               "tie_embeddings=true", "positions=learned", "schedule=interleaved", "chunks=2"]
    compiled = compile_small("llama_gqa", defines)
    assert compiled.deployment.mesh.stage_layers(0) == (0, 2)  # layers 0 and 2 on stage 0, 1 and 3 on stage 1
    run_and_compare(compiled, workdir)


def test_cp2_pp2_with_two_chunks_sends_to_its_own_part_of_the_sequence(workdir):
    """Under context parallelism each pipeline send goes to the next stage's rank holding the same
    part of the sequence: to another rank's part, the ranks wait for each other."""
    defines = ["heads=4", "kv_heads=2", "tp=1", "cp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=4",
               "seq=16", "vocab=64", "schedule=interleaved", "chunks=2"]
    run_and_compare(compile_small("llama_gqa", defines), workdir)
