"""Specs compiled small, and their model.py written: the inputs of the distributed tests."""

from __future__ import annotations

import json
from pathlib import Path

from par.codegen.artifacts import not_generated
from par.codegen.pytorch.emit import emit_model
from par.dsl.checks.check import check
from par.dsl.compiler import Compiled, compile_file, compile_text
from par.dsl.frontend.inputs import parse_defines
from par.dsl.frontend.parser import parse_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def writes_model(path: Path) -> bool:
    """Whether `par build` writes a model.py for the spec (not under context parallelism yet)."""
    deployment, _ = check(parse_text(path.read_text(encoding="utf-8"), path.name))
    return not not_generated(deployment)


# The shipped specs par writes a model.py for.
GENERATED = sorted(path.stem for path in SPECS.glob("*.par") if writes_model(path))
# (spec, defines) for every shipped spec at full size and small, as the distributed tests run them.
# deepseek_v3 at 4 of its 64 replicas, which are copies of one another: its code paths, not its 83,000 nodes.
FEW = {"deepseek_v3": ["dp=4", "ep=4", "experts=16"]}
VARIANTS = [(stem, FEW.get(stem, [])) for stem in GENERATED] + [
    ("baseline_tp8_pp2", ["tp=2", "layers=4", "batch=4"]),
    ("megatron_tp8_pp2", ["tp=1", "pp=4", "layers=4", "batch=8", "microbatches=8", "recompute=full"]),
    ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "recompute=selective"]),
    ("layerwise", ["tp=2", "pp=2", "layers=4", "stages=2,2", "batch=4", "microbatches=2"]),
    # the model's ends on one rank, no padding; tied with learned positions over two stages, padded
    ("llama_gqa", ["kv_heads=2", "tp=1", "pp=1", "dp=1", "layers=2", "batch=4", "microbatches=2", "vocab=64"]),
    ("llama_gqa", ["kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=2", "batch=4", "microbatches=2", "vocab=63",
                   "tie_embeddings=true", "positions=learned"]),
    # the interleaved schedule: two model chunks per stage, the ends on the first chunk and the last
    ("llama_gqa", ["kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=4", "vocab=63",
                   "schedule=interleaved", "chunks=2"]),
    # context parallelism: the ring with the model's ends and learned positions; the all-gather form
    ("llama_gqa", ["kv_heads=2", "tp=2", "cp=2", "pp=1", "dp=1", "layers=2", "batch=4", "microbatches=2", "vocab=64",
                   "positions=learned", "seq=16"]),
    ("llama_gqa", ["kv_heads=2", "tp=2", "cp=2", "cp_attention=allgather", "sp=off", "pp=1", "dp=1", "layers=2",
                   "batch=4", "microbatches=2", "seq=16"]),
    # ZeRO over the data-parallel group and the experts' over the ranks holding the same experts
    ("mixtral_8x7b", ["kv_heads=2", "ep=4", "zero=1"]),
    ("mixtral_8x7b", ["kv_heads=2", "ep=4", "zero=2"]),
    ("llama_gqa", ["kv_heads=2", "tp=2", "cp=2", "pp=1", "dp=2", "layers=2", "batch=4", "microbatches=2", "seq=16", "zero=1"]),
]
# Production sizes shrunk to what a 2-core machine runs in about a second.
SMALL = ["hidden=64", "heads=4", "ffn=256", "seq=8", "dtype=fp32"]


def compile_small(spec: str, defines: list[str]) -> Compiled:
    return compile_file(SPECS / f"{spec}.par", SMALL + defines)


def compile_source(text: str, *defines: str) -> Compiled:
    overrides, _ = parse_defines(list(defines))
    return compile_text(text, "t.par", overrides)


def write_model(compiled: Compiled, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.py"
    path.write_text(emit_model(compiled))
    return path


def read_trace(folder: Path, rank: int) -> list[dict]:
    return json.loads((folder / f"rank{rank}.json").read_text())["events"]


# Blocks the shipped specs do not exercise, each at tp 2 (2 processes).
BLOCKS = {
    # AllToAll under sequence parallelism: a fused QKV from a replicated linear is regrouped per
    # rank before it is split by head; replicated linears on sequence shards get partial gradients.
    "ulysses": """
        block ulysses(x) {
          ln1 = layernorm(x)
          qkv = linear(ln1, 3 * hidden, replicated)
          qkv_heads = alltoall(qkv, hidden)
          ctx = attention(qkv_heads)
          ctx_seq = alltoall(ctx, seq)
          attn = linear(ctx_seq, hidden, replicated)
          h = add(x, attn)
          ln2 = layernorm(h)
          fc1 = linear(ln2, ffn, column)
          act = gelu(fc1)
          mlp = linear(act, hidden, row)
          out = add(h, mlp)
          return out
        }
        model m : ulysses { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2  sp }
    """,
    # A norm over gathered per-rank QKV blocks (reordered back first); GQA.
    "norm over gathered qkv": """
        block qn(x) {
          ln1 = layernorm(x)
          qkv = linear(ln1, (heads + 2 * kv_heads) * head_dim, column)
          gathered = allgather(qkv)
          normed = layernorm(gathered)
          ctx = attention(normed)
          attn = linear(ctx, hidden, row)
          out = add(x, attn)
          return out
        }
        model m : qn { layers 2  hidden 64  heads 4  kv_heads 2  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
    # Attention on a replicated QKV, then a slice whose gradient must come back whole.
    "replicated qkv": """
        block rq(x) {
          ln1 = rmsnorm(x)
          qkv = linear(ln1, 3 * hidden, replicated)
          ctx = attention(qkv)
          attn = linear(ctx, hidden, row)
          out = add(x, attn)
          return out
        }
        model m : rq { layers 2  hidden 64  heads 4  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
    # Sequence parallel, gathered right after the norm: gelu (no parameters) passes the partial
    # gradient of the column-parallel linear back to the AllGather, whose backward ReduceScatter
    # sums it; nothing else reduces it.
    "sp gather before gelu": """
        block sg(x) {
          n = rmsnorm(x)
          a = gelu(n)
          fc = linear(a, ffn, column)
          m = linear(fc, hidden, row)
          out = add(x, m)
          return out
        }
        model m : sg { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2  sp }
        place allgather after n
    """,
    # Sequence parallel, gathered and only sliced back after gelu (which keeps positions apart):
    # each rank reads only its own positions, so the AllGather's backward keeps this rank's part
    # and no ReduceScatter runs.
    "sp gather through gelu to a slice": """
        block gs(x) {
          n = rmsnorm(x)
          g = allgather(n)
          a = gelu(g)
          out = add(x, a)
          return out
        }
        model m : gs { layers 2  hidden 64  heads 4  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2  sp }
    """,
    # A gathered value that also reaches the residual stream: its gradient is whole, so the
    # AllGather's backward keeps this rank's part, and the column-parallel linear reading it
    # AllReduces its input gradient.
    "gathered into the residual": """
        block gr(x) {
          ln = layernorm(x)
          fc = linear(ln, hidden, column)
          g = allgather(fc)
          up = linear(g, ffn, column)
          m = linear(up, hidden, row)
          h = add(x, g)
          out = add(h, m)
          return out
        }
        model m : gr { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
    # Two AllGathers that do not depend on each other (gate, up): every rank issues them in
    # program order, which the DAG records (`after`).
    "llama gathers after qkv, gate, up": """
        model m : llama { layers 2  hidden 64  heads 4  kv_heads 2  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
        place allgather after qkv, gate, up
    """,
    # An op named like the collective lowering inserts before it: the op's step is renamed
    # (allreduce_m_2), and Reference must name its parameters the same way.
    "op named like an inserted collective": """
        block b(x) {
          ln = layernorm(x)
          fc = linear(ln, ffn, column)
          m = linear(fc, hidden, row)
          allreduce_m = layernorm(m)
          out = add(x, allreduce_m)
          return out
        }
        model m : b { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
    # Biases on every linear, two stages: the row-parallel ones added by one rank, their
    # gradients summed over the group.
    "gpt2 tp2 x pp2": """
        model m : gpt2 { layers 4  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  pp 2  microbatches 2 }
    """,
    # A QKV bias split per head, rope under sequence parallelism, another norm epsilon and base.
    "qwen2 sp tp2 x pp2": """
        model m : qwen2 { layers 4  hidden 64  heads 4  kv_heads 2  ffn 256  batch 4  seq 8  dtype fp32
                          norm_eps 1e-6  rope_theta 1000000 }
        mesh { tp 2  pp 2  microbatches 2  sp }
    """,
    # Rope on a gathered QKV (one [q | k | v] block per rank), linear scaling; a replicated
    # linear's bias on sequence shards (a partial gradient). One head of each per rank: with
    # more, SDPA copies the heads out of the per-rank blocks, which the cost model does not count.
    "rope on gathered qkv": """
        block rg(x) {
          ln1 = rmsnorm(x)
          qkv = linear(ln1, (heads + 2 * kv_heads) * head_dim, column, bias)
          gathered = allgather(qkv)
          pos = rope(gathered)
          ctx = attention(pos)
          attn = linear(ctx, hidden, row, bias)
          h = add(x, attn)
          ln2 = layernorm(h)
          fc = linear(ln2, hidden, replicated, bias)
          out = add(h, fc)
          return out
        }
        model m : rg { layers 2  hidden 64  heads 2  kv_heads 2  batch 4  seq 8  dtype fp32
                       rope_scaling linear  rope_factor 2 }
        mesh { tp 2  microbatches 2  sp }
    """,
    # Value names that are Python keywords or would shadow what the generated code uses.
    "clashing names": """
        block b(self) {
          pass = layernorm(self)
          forward = linear(pass, hidden, column)
          torch = gelu(forward)
          lambda = linear(torch, hidden, row)
          out = add(self, lambda)
          return out
        }
        model m : b { layers 2  hidden 64  heads 4  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
    # Value names that are dunders, private or public nn.Module attributes, and a block whose
    # class name would start with a digit.
    "dunder and module attribute names": """
        block _1(_) {
          __init__ = layernorm(_)
          _modules = linear(__init__, ffn, column)
          __call__ = gelu(_modules)
          _parameters = linear(__call__, hidden, row)
          __dict__ = add(_, _parameters)
          __setattr__ = rmsnorm(__dict__)
          dump_patches = linear(__setattr__, hidden, replicated)
          call_super_init = add(__dict__, dump_patches)
          return call_super_init
        }
        model m : _1 { layers 2  hidden 64  heads 4  ffn 256  batch 4  seq 8  dtype fp32 }
        mesh { tp 2  microbatches 2 }
    """,
}
