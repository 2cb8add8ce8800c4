"""The KV cache generation allocates (model.py's `cache_bytes`, which `--generate` prints) is the
serving cost's on every rank: K and V of each layer of the rank's stage, its KV heads (split over
tp, or all of them where attention is replicated), every sequence of its replica, the context,
in the cache's dtype (model.py's default: the spec's kv_dtype). In one process: model.py
imported, nothing launched."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from fork_launch import load_module  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

from par.dsl.cost.serving import spec_serving_cost  # noqa: E402

LLAMA = """
model m : llama { layers 3  hidden 64  heads 4  kv_heads 2  ffn 128  batch 8  seq 16  vocab 101  dtype fp32 }
mesh { tp 2  pp 2  dp 2  microbatches 2 }
serve { prompt 4  generate 3  kv_dtype bf16 }
"""
# attention on all heads after an AllGather of the QKV, as the baseline's: every rank caches every head
GATHERED = """
model g : gpt { layers 2  hidden 64  heads 4  ffn 128  batch 4  seq 16  vocab 64  dtype fp32 }
mesh { tp 2  pp 2 }
place allgather after qkv
serve { prompt 4  generate 4 }
"""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize(
    ("text", "heads_here"),
    [(LLAMA, 1), (GATHERED, 4)],
    ids=["gqa split over tp, 2 + 1 layers, dp 2, bf16", "replicated attention"],
)
def test_the_kv_cache_model_py_allocates_is_the_serving_costs(workdir, text, heads_here):
    compiled = compile_source(text)
    model = load_module(write_model(compiled, workdir), f"serving_model_{heads_here}")
    assert model.KV_CACHE_HEADS == heads_here
    cost = spec_serving_cost(compiled)
    serve = cost.attrs["serve"]
    kv_dtype = DTYPES[serve["kv_dtype"]]
    assert model.KV_DTYPE == kv_dtype  # generation's default
    mesh = compiled.deployment.mesh
    for phase in (cost.prefill, cost.decode):
        for device in phase.devices:
            layers = mesh.stages[device.stage][1] - mesh.stages[device.stage][0] + 1
            allocated = model.cache_bytes(SimpleNamespace(stage=device.stage), serve["context"], kv_dtype)
            assert allocated == cost.kv_bytes(device) > 0
            size = torch.empty((), dtype=kv_dtype).element_size()
            sequences = cost.sequences // mesh.dp
            assert allocated == 2 * layers * sequences * heads_here * serve["context"] * model.HEAD_DIM * size
