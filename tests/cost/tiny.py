"""Small specs compiled in memory for the cost tests."""

from __future__ import annotations

from pathlib import Path

from par.dsl.compiler import compile_file, compile_text
from par.dsl.frontend.inputs import parse_defines

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"

# A GPT block, small enough to compile in milliseconds; every size can be changed with -D.
GPT = """
model tiny : gpt { layers 4  hidden 64  heads 8  ffn 256  batch 8  seq 16  dtype fp16 }
mesh { tp 4  pp 2  microbatches 2 }
"""

LLAMA = """
model tiny : llama { layers 4  hidden 64  heads 8  kv_heads 2  ffn 160  batch 8  seq 16  dtype bf16 }
mesh { tp 2  pp 2  microbatches 2 }
"""


def compile_source(text: str, *defines: str, name: str = "tiny.par"):
    overrides, _ = parse_defines(list(defines))
    return compile_text(text, name, overrides)


def compile_spec(stem: str, *defines: str):
    return compile_file(SPECS / f"{stem}.par", list(defines))


# The seed deployments, shrunk so that tests stay fast; tp, pp and microbatches kept.
SMALL = ("layers=4", "hidden=64", "heads=8", "ffn=256", "batch=8", "seq=16")


def megatron_layer_bytes(b: int, s: int, h: int, ffn: int, heads: int, t: int, dtype: int) -> int:
    """What one Megatron layer keeps for backward on one tensor-parallel rank (docs/cost.md):
    the inputs of ln1 and ln2 and of the four linears, QKV and the attention output (SDPA's q, k, v
    and out; the output projection reads the same tensor), the input of gelu; one fp32 mean and
    1/std per row for each LayerNorm, one fp32 logsumexp per local head and row. No partial sum
    and no AllReduce output is kept."""
    stream = h + h + h + h  # ln1's input, ln1's output (qkv's input), h (ln2's input), ln2's output (fc1's input)
    sharded = (3 * h + h + ffn + ffn) // t  # qkv, the attention output, fc1 (gelu's input), act (mlp's input)
    return b * s * (stream + sharded) * dtype + b * s * (2 * 2 * 4 + heads // t * 4)
