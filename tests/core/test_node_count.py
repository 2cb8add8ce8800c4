"""The closed-form node count the budget is checked with equals the nodes expansion makes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from par.dsl.compiler import compile_text
from par.dsl.dag.expand import node_count

# Spec-defined blocks beside the built-in ones: written collectives, replicated linears, no
# attention, a reduce-scatter; each compiles at every tp below, with and without sp.
CUSTOM = {
    "mlp": """
block mlp(x) {
  n    = rmsnorm(x)
  up   = linear(n, ffn, column)
  a    = silu(up)
  down = linear(a, hidden, row)
  out  = add(x, down)
  return out
}""",
    "written": """
block written(x) {
  n    = layernorm(x)
  up   = linear(n, ffn, column)
  a    = gelu(up)
  down = linear(a, hidden, row)
  r    = allreduce(down)
  out  = add(x, r)
  return out
}""",
    "replicated": """
block replicated(x) {
  n   = layernorm(x)
  y   = linear(n, hidden, replicated)
  g   = gelu(y)
  out = add(x, g)
  return out
}""",
}
BLOCKS = ["gpt", "gpt2", "llama", "qwen2", *CUSTOM]


@st.composite
def specs(draw):
    block = draw(st.sampled_from(BLOCKS))
    tp = draw(st.sampled_from([1, 2, 4]))
    pp = draw(st.integers(1, 3))
    dp = draw(st.integers(1, 3))
    layers = draw(st.integers(pp, 5))
    sp = draw(st.booleans())
    gathers = block == "gpt" and draw(st.booleans())
    heads = 2 * tp
    kv_heads = tp if block in ("llama", "qwen2") else heads  # grouped-query attention in llama and qwen2 only
    text = (
        f"model m : {block} {{ layers {layers}  hidden {heads * 8}  heads {heads}  kv_heads {kv_heads}  "
        f"batch {2 * dp}  seq {4 * tp}  dtype fp32 }}\n"
        f"mesh {{ tp {tp}  pp {pp}  dp {dp}  microbatches 2{'  sp' if sp else ''} }}\n"
        + CUSTOM.get(block, "")
        + ("\nplace allgather after qkv, fc1 as mlp\n" if gathers else "")
    )
    return text


@settings(max_examples=80, deadline=None)
@given(specs())
def test_the_closed_form_counts_every_node_expansion_makes(text):
    compiled = compile_text(text, "n.par")
    assert node_count(compiled.program) == compiled.graph.number_of_nodes()


def test_the_count_covers_slices_boundaries_and_replicas():
    # gpt with sp, tp 2, pp 2, dp 3, 4 layers: input slices on 3 × 2 ranks, per layer and
    # replica 10 compute nodes per rank and 4 collectives, a send and a recv on each of 2 × 3
    # ranks at the one boundary, and input and output.
    text = (
        "model m : gpt { layers 4  hidden 32  heads 4  batch 6  seq 8 }\n"
        "mesh { tp 2  pp 2  dp 3  microbatches 2  sp }\n"
    )
    compiled = compile_text(text, "n.par")
    expected = 3 * 2 + 4 * 3 * (10 * 2 + 4) + 2 * 2 * 3 + 2
    assert node_count(compiled.program) == expected == compiled.graph.number_of_nodes()
