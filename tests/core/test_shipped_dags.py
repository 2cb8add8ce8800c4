"""The shipped specs expand to exactly the DAGs the deployments they describe need.

Expected counts and bytes are derived here from the model and mesh numbers, independently of
the compiler: b·s·h per microbatch, ring traffic 2(t−1)/t for AllReduce and (t−1)/t for AllGather.
"""

from collections import Counter

LAYERS, HIDDEN, FFN, SEQ, BATCH, FP16 = 16, 4096, 16384, 10000, 128, 2


def comm(graph, op):
    return {n: d for n, d in graph.nodes(data=True) if d["op"] == op}


def test_baseline_has_exactly_the_32_allgathers_fully_connected(shipped):
    graph = shipped("baseline_tp8_pp2").graph
    gathers = comm(graph, "allgather")
    expected = {f"layer_{i}_allgather_{name}" for i in range(LAYERS) for name in ("qkv", "mlp")}
    assert set(gathers) == expected
    for node in expected:
        layer = int(node.split("_")[1])
        stage = 0 if layer < 8 else 1
        ranks = list(range(8 * stage, 8 * stage + 8))
        producer = "qkv" if node.endswith("qkv") else "fc1"
        consumer = "ctx" if node.endswith("qkv") else "act"
        assert sorted(graph.predecessors(node)) == sorted(f"layer_{layer}_{producer}_gpu{r}" for r in ranks)
        assert sorted(graph.successors(node)) == sorted(f"layer_{layer}_{consumer}_gpu{r}" for r in ranks)
        assert gathers[node]["devices"] == ranks


def test_baseline_every_layer_has_its_two_allreduces(shipped):
    graph = shipped("baseline_tp8_pp2").graph
    per_layer = Counter(d["layer"] for d in comm(graph, "allreduce").values())
    assert per_layer == {layer: 2 for layer in range(LAYERS)}


def test_baseline_stages_joined_by_one_send_recv_per_tp_rank(shipped):
    graph = shipped("baseline_tp8_pp2").graph
    sends, recvs = comm(graph, "send"), comm(graph, "recv")
    assert sorted(sends) == sorted(f"stage_0_send_gpu{r}" for r in range(8))
    assert sorted(recvs) == sorted(f"stage_1_recv_gpu{r}" for r in range(8, 16))
    for r in range(8):
        assert list(graph.successors(f"stage_0_send_gpu{r}")) == [f"stage_1_recv_gpu{r + 8}"]
        assert list(graph.predecessors(f"stage_0_send_gpu{r}")) == [f"layer_7_out_gpu{r}"]


def test_layerwise_has_allreduce_after_every_attention_output_and_its_allgathers(shipped):
    graph = shipped("layerwise").graph
    for layer in range(LAYERS):
        node = f"layer_{layer}_allreduce_attn"
        stage = layer // 4
        assert sorted(graph.predecessors(node)) == sorted(f"layer_{layer}_attn_gpu{4 * stage + t}" for t in range(4))
        assert graph.nodes[node]["inserted"] is False  # written in the spec
        for name in ("qkv", "mlp"):
            assert f"layer_{layer}_allgather_{name}" in graph
    assert len(comm(graph, "send")) == 3 * 4


def test_megatron_has_no_allgather_and_two_explained_allreduces_per_layer(shipped):
    graph = shipped("megatron_tp8_pp2").graph
    assert comm(graph, "allgather") == {}
    reduces = comm(graph, "allreduce")
    assert Counter(d["layer"] for d in reduces.values()) == {layer: 2 for layer in range(LAYERS)}
    for data in reduces.values():
        assert data["inserted"] and "P -> R is an AllReduce" in data["reason"]


def test_megatron_bytes_match_the_closed_form(shipped):
    graph = shipped("megatron_tp8_pp2").graph
    t, b = 8, BATCH // 4  # 4 microbatches
    elements = b * SEQ * HIDDEN
    for data in comm(graph, "allreduce").values():
        assert data["bytes"] == elements * FP16
        assert data["wire_bytes"] * t == 2 * (t - 1) * elements * FP16
    # Megatron: forward sends 4·b·s·h·(t−1)/t elements per rank per layer.
    per_layer = sum(d["wire_bytes"] for d in comm(graph, "allreduce").values() if d["layer"] == 0)
    assert per_layer * t == 4 * b * SEQ * HIDDEN * (t - 1) * FP16


def test_baseline_allgather_bytes(shipped):
    graph = shipped("baseline_tp8_pp2").graph
    t, b = 8, BATCH // 4
    qkv = graph.nodes["layer_0_allgather_qkv"]
    assert qkv["in_shape"] == (b, SEQ, 3 * HIDDEN // t) and qkv["out_shape"] == (b, SEQ, 3 * HIDDEN)
    assert qkv["wire_bytes"] * t == (t - 1) * b * SEQ * 3 * HIDDEN * FP16
    mlp = graph.nodes["layer_0_allgather_mlp"]
    assert mlp["wire_bytes"] * t == (t - 1) * b * SEQ * FFN * FP16


def test_node_counts_per_layer(shipped):
    # Megatron: 10 ops per rank per layer and 2 AllReduces; the baseline adds 2 local slices per
    # rank (attention and GELU run replicated after the gathers) and 2 AllGathers.
    for stem, per_rank, collectives in (("megatron_tp8_pp2", 10, 2), ("baseline_tp8_pp2", 12, 4)):
        graph = shipped(stem).graph
        per_layer = Counter(d["layer"] for _, d in graph.nodes(data=True) if d["layer"] is not None)
        assert per_layer == {layer: 8 * per_rank + collectives for layer in range(LAYERS)}
        assert graph.number_of_nodes() == LAYERS * (8 * per_rank + collectives) + 2 + 2 * 8


def test_llama_sequence_parallel_collectives(shipped):
    graph = shipped("llama_gqa").graph
    layers, dp = 32, 2
    kinds = Counter(d["op"] for _, d in graph.nodes(data=True) if d["kind"] == "comm")
    # Megatron-SP: AllGather before attention and MLP, ReduceScatter after each; one replica per dp rank.
    # The ends: the embedding's ReduceScatter, the AllGather before the head, the loss's two AllReduces.
    assert kinds == {
        "allgather": (2 * layers + 1) * dp,
        "reducescatter": (2 * layers + 1) * dp,
        "allreduce": 2 * dp,
        "send": 8 * dp,
        "recv": 8 * dp,
    }
    gather = graph.nodes["layer_0_allgather_ln2_dp1"]
    assert gather["devices"] == list(range(16, 24))
    assert sorted(graph.successors("layer_0_allgather_ln2_dp1")) == sorted(
        f"layer_0_{op}_gpu{r}" for op in ("gate", "up") for r in range(16, 24)
    )


def test_node_ids_follow_the_contract(shipped):
    # Expansion spells the compute ids out for speed; they must stay what par.dsl.dag.ids says.
    from par.dsl.checks.deployment import Mesh
    from par.dsl.dag import ids

    for stem in ("llama_gqa", "baseline_tp8_pp2"):
        graph = shipped(stem).graph
        mesh = Mesh.from_attributes(graph.graph["mesh"])
        for node, data in graph.nodes(data=True):
            if data["kind"] == "compute" and data["layer"] is None:  # the model's ends
                assert node == ids.end_id(data["name"], data["devices"][0])
            elif data["kind"] == "compute" or data["op"] == "slice" and data["layer"] is not None:
                assert node == ids.compute_id(data["layer"], data["name"], data["devices"][0])
            elif data["op"] in ("send", "recv"):
                make = ids.send_id if data["op"] == "send" else ids.recv_id
                assert node == make(data["stage"], data["devices"][0])
            elif data["kind"] == "comm" and data["layer"] is None:
                dp_rank = mesh.coords(data["devices"][0])[0]
                assert node == ids.end_collective_id(data["name"], dp_rank, mesh.dp)
            elif data["kind"] == "comm":
                dp_rank = mesh.coords(data["devices"][0])[0]
                assert node == ids.collective_id(data["layer"], data["name"], dp_rank, mesh.dp)
