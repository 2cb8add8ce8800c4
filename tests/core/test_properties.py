"""For random valid specs: the validator finds nothing and counts match closed forms."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from par.dsl.compiler import compile_text
from par.dsl.dag.validate import validate

# Per layer and tensor-parallel group, derived by hand from the placement rules:
# (compute ops per rank, local slices per rank, collectives by kind)
CLOSED_FORM = {
    # Megatron: AllReduce after each row-parallel linear.
    ("gpt", False, False): (10, 0, {"allreduce": 2}),
    ("llama", False, False): (13, 0, {"allreduce": 2}),
    # Biases change no node: gpt2 has gpt's, qwen2 llama's.
    ("gpt2", False, False): (10, 0, {"allreduce": 2}),
    ("qwen2", True, False): (13, 0, {"allgather": 2, "reducescatter": 2}),
    # Written AllGathers after QKV and FC1: attention and GELU then run replicated and are
    # sliced back for the row-parallel linear; the AllReduces stay.
    ("gpt", False, True): (10, 2, {"allreduce": 2, "allgather": 2}),
    # Sequence parallel: AllGather before the column linears, ReduceScatter after the row linears.
    ("gpt", True, False): (10, 0, {"allgather": 2, "reducescatter": 2}),
    ("llama", True, False): (13, 0, {"allgather": 2, "reducescatter": 2}),
    ("gpt", True, True): (10, 2, {"allgather": 4, "reducescatter": 2}),
}


@st.composite
def deployments(draw):
    block, sp, gathers = draw(st.sampled_from(sorted(CLOSED_FORM)))
    tp = draw(st.sampled_from([1, 2, 4]))
    pp = draw(st.integers(1, 3))
    dp = draw(st.integers(1, 2))
    layers = draw(st.integers(pp, 6))
    microbatches = draw(st.integers(1, 3))
    heads = tp * draw(st.integers(1, 2))
    kv_heads = heads if block.startswith("gpt") else tp
    head_dim = 8
    return {
        "block": block, "sp": sp, "gathers": gathers, "tp": tp, "pp": pp, "dp": dp, "layers": layers,
        "heads": heads, "kv_heads": kv_heads, "hidden": heads * head_dim, "microbatches": microbatches,
        "seq": 4 * tp, "batch": dp * microbatches * draw(st.integers(1, 2)),
    }


def spec_text(c: dict) -> str:
    text = (
        f"model m : {c['block']} {{ layers {c['layers']}  hidden {c['hidden']}  heads {c['heads']}  "
        f"kv_heads {c['kv_heads']}  ffn {4 * c['hidden']}  batch {c['batch']}  seq {c['seq']}  dtype fp32 }}\n"
        f"mesh {{ tp {c['tp']}  pp {c['pp']}  dp {c['dp']}  microbatches {c['microbatches']}{'  sp' if c['sp'] else ''} }}\n"
    )
    if c["gathers"]:
        text += "place allgather after qkv, fc1 as mlp\n"
    return text


@settings(max_examples=60, deadline=None)
@given(deployments())
def test_random_specs_expand_to_valid_dags_of_the_expected_size(c):
    graph = compile_text(spec_text(c), "p.par").graph
    assert validate(graph) == []
    ops, slices, collectives = CLOSED_FORM[(c["block"], c["sp"], c["gathers"])]
    tp, pp, dp, layers = c["tp"], c["pp"], c["dp"], c["layers"]
    if tp == 1:
        slices, collectives = 0, {}
    kinds = Counter(d["op"] for _, d in graph.nodes(data=True) if d["kind"] == "comm")
    expected = Counter({kind: count * layers * dp for kind, count in collectives.items()})
    expected.update({"send": (pp - 1) * dp * tp, "recv": (pp - 1) * dp * tp})
    assert kinds == +expected
    compute = sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "compute")
    assert compute == ops * layers * dp * tp
    routes = sum(1 for _, d in graph.nodes(data=True) if d["op"] == "slice")
    input_slices = dp * tp if c["sp"] and tp > 1 else 0
    assert routes == slices * layers * dp * tp + input_slices


@settings(max_examples=40, deadline=None)
@given(deployments())
def test_allreduce_bytes_follow_the_ring_formula(c):
    graph = compile_text(spec_text(c), "p.par").graph
    t = c["tp"]
    b = c["batch"] // (c["dp"] * c["microbatches"])
    full = b * c["seq"] * c["hidden"] * 4
    for _, data in graph.nodes(data=True):
        if data["op"] == "allreduce":
            assert data["wire_bytes"] * t == 2 * (t - 1) * full
        elif data["op"] == "reducescatter":
            assert data["wire_bytes"] * t == (t - 1) * full
        elif data["op"] in ("send", "recv"):
            local = full // t if c["sp"] else full
            assert data["bytes"] == local
