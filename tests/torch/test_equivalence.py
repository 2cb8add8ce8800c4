"""The generated code, run on CPU with gloo, equals the unsharded Reference and issues the DAG's collectives.

One launch per deployment: every rank runs `--check --trace`, which compares its outputs and
every parameter's gradient with Reference (built from the same seed, on the same batch) and
records each collective it issues; the traces are then held against the DAG.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from checked_run import run_and_compare  # noqa: E402
from small_models import BLOCKS, compile_small, compile_source  # noqa: E402

DEPLOYMENTS = {
    # baseline: AllGathers written after qkv and fc1; attention reads the gathered per-rank heads
    "baseline tp2 x pp2, gpipe": ("baseline_tp8_pp2", ["tp=2", "layers=4", "batch=4", "schedule=gpipe"]),
    "megatron tp4": ("megatron_tp8_pp2", ["tp=4", "pp=1", "layers=2", "batch=4"]),
    "megatron pp4, 8 microbatches, 1f1b": (
        "megatron_tp8_pp2", ["tp=1", "pp=4", "layers=8", "batch=8", "microbatches=8", "schedule=1f1b"],
    ),
    "megatron pp4, 8 microbatches, gpipe": (
        "megatron_tp8_pp2", ["tp=1", "pp=4", "layers=4", "batch=8", "microbatches=8", "schedule=gpipe"],
    ),
    "megatron tp2 x dp2": ("megatron_tp8_pp2", ["tp=2", "pp=1", "dp=2", "layers=2", "batch=4", "microbatches=2"]),
    # layerwise: explicit stage ranges and a written AllReduce
    "layerwise tp2 x pp2": ("layerwise", ["tp=2", "pp=2", "layers=4", "stages=2,2", "batch=4", "microbatches=2"]),
    # llama: sequence parallel, GQA with 2 KV heads for 4 query heads, SwiGLU
    "llama sp gqa tp2 x pp2, 1f1b": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2"],
    ),
    "llama gqa tp2 x pp2, no sp": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "sp=off", "layers=4", "batch=4", "microbatches=2"],
    ),
    "llama sp gqa tp2 x dp2": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=1", "dp=2", "layers=2", "batch=4", "microbatches=2"],
    ),
}


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_shipped_spec_matches_reference_dag_and_cost_model(name, workdir):
    spec, defines = DEPLOYMENTS[name]
    run_and_compare(compile_small(spec, defines), workdir)


@pytest.mark.parametrize("name", BLOCKS)
def test_other_blocks_match_reference_dag_and_cost_model(name, workdir):
    run_and_compare(compile_source(BLOCKS[name]), workdir)
