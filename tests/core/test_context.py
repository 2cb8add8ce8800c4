"""Attention under context parallelism: ring steps, the AllGather form, the count of nodes, and
the validator's proof of each ring (par.dsl.dag.ring, par.dsl.dag.rings)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from par.dsl.compiler import compile_text
from par.dsl.dag.expand import node_count
from par.dsl.dag.validate import validate


def spec(*, tp=2, cp=2, pp=1, dp=1, algorithm="ring", sp=False, vocab=False, block="llama", layers=2, seq=None) -> str:
    heads = 2 * tp
    kv = tp if block == "llama" else heads
    seq = seq or 4 * cp * tp
    return (
        f"model m : {block} {{ layers {layers}  hidden {heads * 8}  heads {heads}  kv_heads {kv}  ffn {heads * 16}  "
        f"batch {2 * dp}  seq {seq}  dtype fp32" + ("  vocab 40" if vocab else "") + " }\n"
        f"mesh {{ tp {tp}  cp {cp}  cp_attention {algorithm}  pp {pp}  dp {dp}  microbatches 2" + ("  sp" if sp else "") + " }\n"
    )


def ring_of(graph, layer, rank):
    """The ring steps of `rank` in `layer`, in step order, and the sends and recvs there."""
    steps = sorted(
        (n for n, d in graph.nodes(data=True) if d["op"] == "ring_attention" and d["layer"] == layer and d["devices"] == [rank]),
        key=lambda n: int(n.split("_ring")[1].split("_")[0]),
    )
    return steps


def block_owner(graph, node):
    """Whose keys and values a node carries, found by walking edges back to a slice of them."""
    data = graph.nodes[node]
    if data["op"] == "slice":
        return data["devices"][0]
    (source,) = [s for s in graph.predecessors(node) if graph.nodes[s]["op"] in ("send", "recv", "slice")]
    return block_owner(graph, source)


def test_every_rank_attends_to_every_block_once():
    compiled = compile_text(spec(tp=2, cp=4, seq=64), "t.par")
    graph, mesh = compiled.graph, compiled.deployment.mesh
    for rank in range(mesh.world):
        steps = ring_of(graph, 0, rank)
        assert len(steps) == 4
        owners = [block_owner(graph, next(s for s, t, d in graph.in_edges(step, data=True) if d["operands"] == (1,))) for step in steps]
        assert owners[0] == rank
        assert sorted(owners) == sorted(mesh.cp_group_of(rank))


def test_each_step_passes_one_block_to_the_next_rank_in_the_ring():
    compiled = compile_text(spec(tp=2, cp=4, seq=64), "t.par")
    graph, mesh = compiled.graph, compiled.deployment.mesh
    model = compiled.deployment.model
    # the block: this rank's seq / cp tokens of its kv_heads / tp heads' keys and values
    block = 2 * (64 // 4) * 2 * (model.kv_heads // 2) * model.head_dim * 4  # batch 2 / microbatches 2 = 1; fp32
    sends = [d for _, d in graph.nodes(data=True) if d["op"] == "send" and "ring" in d]
    assert len(sends) == 2 * mesh.world * (4 - 1)  # per layer, rank and pass
    for data in sends:
        rank = data["devices"][0]
        ring = mesh.cp_group_of(rank)
        assert data["peer"] == ring[(ring.index(rank) + 1) % 4]
        assert data["wire_bytes"] == block // 2 and data["backward_wire_bytes"] == block


def test_the_ring_steps_together_are_the_attention_of_the_rank_s_queries():
    ring = compile_text(spec(tp=2, cp=4, seq=64), "t.par").graph
    alone = compile_text(spec(tp=2, cp=1, seq=64), "t.par").graph
    whole = alone.nodes["layer_0_ctx_gpu0"]["flops"]  # the whole sequence's queries
    steps = [ring.nodes[n]["flops"] for n in ring_of(ring, 0, 0)]
    assert len(set(steps)) == 1 and sum(steps) * 4 == whole  # a quarter of the queries, over every key


def test_allgather_gathers_keys_and_values_once_per_group():
    compiled = compile_text(spec(tp=2, cp=4, seq=64, algorithm="allgather"), "t.par")
    graph, mesh = compiled.graph, compiled.deployment.mesh
    gathers = [d for _, d in graph.nodes(data=True) if d["op"] == "allgather"]
    assert len(gathers) == 2 * mesh.tp  # a layer, a tensor-parallel rank
    assert all(len(d["devices"]) == 4 and d["out_shape"][1] == 64 and d["backward"] == "reducescatter" for d in gathers)
    assert not [n for n, d in graph.nodes(data=True) if d["op"] in ("send", "recv")]


def test_cp_1_makes_no_ring():
    graph = compile_text(spec(cp=1), "t.par").graph
    assert not [n for n, d in graph.nodes(data=True) if d["op"] in ("ring_attention", "attn_merge") or "ring" in d]


@st.composite
def specs(draw):
    return spec(
        tp=draw(st.sampled_from([1, 2])),
        cp=draw(st.sampled_from([2, 3, 4])),
        pp=draw(st.integers(1, 2)),
        dp=draw(st.integers(1, 2)),
        algorithm=draw(st.sampled_from(["ring", "allgather"])),
        sp=draw(st.booleans()),
        vocab=draw(st.booleans()),
        block=draw(st.sampled_from(["llama", "gpt"])),
    )


@settings(max_examples=25, deadline=None)
@given(specs())
def test_the_closed_form_counts_every_node_of_a_context_parallel_dag(text):
    compiled = compile_text(text, "n.par")
    assert node_count(compiled.program) == compiled.graph.number_of_nodes()


# -- the validator's proof of the ring ------------------------------------------------------------


def ring_graph(cp=4):
    return compile_text(spec(tp=1, cp=cp, layers=1, seq=8 * cp), "t.par").graph


def messages(graph) -> list[str]:
    return [d.message for d in validate(graph)]


def test_the_rings_par_builds_are_proved():
    for cp in (2, 3, 4):
        assert messages(ring_graph(cp)) == []


def test_a_send_to_itself_is_found():
    graph = ring_graph()
    graph.nodes["layer_0_ctx_kvsend1_gpu1"]["peer"] = 1
    found = messages(graph)
    assert any("layer_0_ctx_kvsend1_gpu1 sends to its own gpu 1" in m for m in found), found


def test_a_ring_that_does_not_close_is_found():
    graph = ring_graph()
    # gpu 3 passes its step-1 block to gpu 2 instead of gpu 0: 0 -> 1 -> 2 -> 3 -> 2
    graph.nodes["layer_0_ctx_kvsend1_gpu3"]["peer"] = 2
    found = messages(graph)
    assert any("step 1 does not close" in m and "leaving gpu" in m for m in found), found


def test_a_block_that_never_reaches_a_rank_is_found():
    graph = ring_graph()
    # gpu 2 passes on at step 2 the block it held at step 0 (its own) instead of the one it received
    graph.remove_edge("layer_0_ctx_kvrecv1_gpu2", "layer_0_ctx_kvsend2_gpu2")
    graph.add_edge("layer_0_ctx_kv_gpu2", "layer_0_ctx_kvsend2_gpu2", operands=(0,))
    graph.nodes["layer_0_ctx_kvsend2_gpu2"]["in_shape"] = graph.nodes["layer_0_ctx_kv_gpu2"]["out_shape"]
    found = messages(graph)
    assert any("the keys and values of gpu 1 never reach gpu 3" in m for m in found), found


def test_an_order_that_deadlocks_is_found():
    graph = ring_graph()
    for rank in (1, 3):  # odd ranks send first too: every rank waits in its send
        graph.nodes[f"layer_0_ctx_kvsend1_gpu{rank}"].pop("after")
        graph.nodes[f"layer_0_ctx_kvrecv1_gpu{rank}"]["after"] = f"layer_0_ctx_kvsend1_gpu{rank}"
    found = messages(graph)
    assert any("deadlocks with blocking sends" in m for m in found), found
