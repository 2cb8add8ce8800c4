"""The backward communication the compiler decides for each step (par.dsl.lowering.backward), and the DAG attributes it becomes.

Each expectation follows from where a gradient is partial: a column-parallel linear or a slice
gives its R input a partial gradient; ops without parameters pass a partial gradient on; a
gradient from anywhere else (a norm, the residual, the layer's output) is whole.
"""

from par.dsl.lowering.backward import PAIRS, backward_kind

MODEL = "model m : {block} {{ layers 2  hidden 32  heads 4  ffn 64  batch 4  seq 8  dtype fp32 }}\n"


def pairs(compiled):
    """step -> (pair, copied), for the steps that have either."""
    return {s.name: (s.pair, s.copied) for s in compiled.program.steps if s.pair or s.copied}


def block(body: str, mesh: str, extra: str = "") -> str:
    return f"block b(x) {{\n{body}\n}}\n" + MODEL.format(block="b") + f"mesh {{ {mesh} }}\n{extra}"


def test_megatron_copies_the_inputs_of_the_column_linears_and_allreduces_have_no_backward(compile_spec):
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 2 }")
    assert pairs(compiled) == {
        "ln1": (None, True),
        "allreduce_attn": ("all_reduce", False),
        "ln2": (None, True),
        "allreduce_mlp": ("all_reduce", False),
    }
    assert not compiled.program.param_copied


def test_the_baselines_gathers_keep_their_part_in_backward_because_each_rank_reads_only_its_own(compile_spec):
    # attention (per head) and gelu (per element) keep the ranks' parts apart, and their results
    # are only sliced to this rank's part: the gradient outside it is zero, so no ReduceScatter
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 2 }\nplace allgather after qkv, fc1 as mlp\n")
    assert pairs(compiled) == {
        "ln1": (None, True),
        "allgather_qkv": ("all_gather", False),
        "allreduce_attn": ("all_reduce", False),
        "ln2": (None, True),
        "allgather_mlp": ("all_gather", False),
        "allreduce_mlp": ("all_reduce", False),
    }
    reasons = {step.name: step.backward_reason for step in compiled.program.steps if step.backward_reason}
    assert set(reasons) == {"allgather_qkv", "allgather_mlp"}
    assert "attention" in reasons["allgather_qkv"] and "slice_ctx" in reasons["allgather_qkv"]
    assert "gelu" in reasons["allgather_mlp"] and "slice_act" in reasons["allgather_mlp"]
    graph = compiled.graph
    assert not any(data.get("backward") == "reducescatter" for _, data in graph.nodes(data=True))
    gathers = [data for _, data in graph.nodes(data=True) if data["op"] == "allgather"]
    assert len(gathers) == 2 * 2  # two per layer, two layers
    assert all("backward" not in data and data["backward_reason"] for data in gathers)


def test_a_gather_read_by_a_column_linear_reduce_scatters_its_partial_gradient(compile_spec):
    # the column-parallel linear reads every part of the gathered tensor: each rank's gradient
    # is dense, and the ranks' gradients must be summed
    body = (
        "ln = layernorm(x)\nfc = linear(ln, hidden, column)\ng = allgather(fc)\na = gelu(g)\n"
        "up = linear(a, ffn, column)\nm = linear(up, hidden, row)\nout = add(x, m)\nreturn out"
    )
    compiled = compile_spec(block(body, "tp 2"))
    assert pairs(compiled)["allgather_g"] == ("all_gather_to_tp", False)
    assert not any(step.backward_reason for step in compiled.program.steps)


SEQUENCE_GATHER = "n = rmsnorm(x)\n{gathered}\n{op}\nout = add(x, a)\nreturn out"


def test_a_sequence_gather_through_gelu_to_a_slice_keeps_its_part(compile_spec):
    body = SEQUENCE_GATHER.format(gathered="g = allgather(n)", op="a = gelu(g)")
    compiled = compile_spec(block(body, "tp 2  sp"))
    assert pairs(compiled) == {"allgather_g": ("all_gather", False)}
    assert "along seq" in compiled.program.steps[1].backward_reason


def test_a_sequence_gather_through_attention_reduce_scatters_because_attention_mixes_positions(compile_spec):
    # the same shape of block, but causal attention reads every earlier position: rank 1's part
    # of the output depends on rank 0's part of the input, whose gradient is then not zero
    body = SEQUENCE_GATHER.format(gathered="qkv = linear(n, 3 * hidden, replicated)\ng = allgather(qkv)", op="a = attention(g)")
    compiled = compile_spec(block(body, "tp 2  sp"))
    assert pairs(compiled)["allgather_g"] == ("all_gather_to_tp", False)
    assert not any(step.backward_reason for step in compiled.program.steps)


def test_sequence_parallel_gathers_reduce_scatter_and_scatters_gather(compile_spec):
    compiled = compile_spec(MODEL.format(block="llama") + "mesh { tp 2  sp }")
    assert pairs(compiled) == {
        "allgather_ln1": ("all_gather_to_tp", False),
        "reducescatter_attn": ("reduce_scatter", False),
        "allgather_ln2": ("all_gather_to_tp", False),
        "reducescatter_mlp": ("reduce_scatter", False),
    }


def test_a_gather_reaching_a_column_linear_through_gelu_is_the_only_reduction(compile_spec):
    body = "n = rmsnorm(x)\na = gelu(n)\nfc = linear(a, ffn, column)\nm = linear(fc, hidden, row)\nout = add(x, m)\nreturn out"
    compiled = compile_spec(block(body, "tp 2  sp", "place allgather after n\n"))
    assert pairs(compiled) == {"allgather_n": ("all_gather_to_tp", False), "reducescatter_m": ("reduce_scatter", False)}


def test_a_gather_that_also_reaches_the_residual_keeps_its_part_and_is_copied(compile_spec):
    body = (
        "ln = layernorm(x)\nfc = linear(ln, hidden, column)\ng = allgather(fc)\nup = linear(g, ffn, column)\n"
        "m = linear(up, hidden, row)\nh = add(x, g)\nout = add(h, m)\nreturn out"
    )
    compiled = compile_spec(block(body, "tp 2"))
    assert pairs(compiled) == {
        "ln": (None, True),
        "allgather_g": ("all_gather", True),
        "allreduce_m": ("all_reduce", False),
    }


def test_a_gather_read_by_a_norm_keeps_its_part_and_a_slice_of_a_whole_gradient_gathers_it(compile_spec):
    body = (
        "ln = layernorm(x)\nqkv = linear(ln, 3 * hidden, column)\ng = allgather(qkv)\nn = layernorm(g)\n"
        "ctx = attention(n)\nattn = linear(ctx, hidden, row)\nout = add(x, attn)\nreturn out"
    )
    compiled = compile_spec(block(body, "tp 2"))
    assert pairs(compiled) == {
        "ln": (None, True),
        "allgather_g": ("all_gather", False),
        "slice_ctx": ("scatter_to_tp", False),
        "allreduce_attn": ("all_reduce", False),
    }


def test_a_layer_input_read_by_a_column_linear_is_copied_and_its_producers_carry_the_allreduce(compile_spec):
    body = "fc = linear(x, ffn, column)\nm = linear(fc, hidden, row)\nout = add(x, m)\nreturn out"
    compiled = compile_spec(block(body, "tp 2  pp 2"))
    assert compiled.program.param_copied
    graph = compiled.graph
    carriers = sorted(node for node, data in graph.nodes(data=True) if data.get("backward") == "allreduce")
    # layer 0 reads `input`, layer 1 (stage 1) the received activation: each rank's gradient is AllReduced
    assert carriers == ["input", "stage_1_recv_gpu2", "stage_1_recv_gpu3"]
    whole = 4 * 8 * 32 * 4  # batch 4 (one microbatch), seq 8, hidden 32, fp32
    assert {graph.nodes[node]["backward_wire_bytes"] for node in carriers} == {whole}  # 2(n-1)/n of it, n = 2


def test_one_rank_per_group_has_no_backward_communication(compile_spec):
    compiled = compile_spec(MODEL.format(block="gpt") + "mesh { tp 1  pp 2 }\nplace allgather after qkv\n")
    assert pairs(compiled) == {} and not compiled.program.param_copied
    assert not any("backward" in data for _, data in compiled.graph.nodes(data=True))


def test_every_node_carries_its_steps_backward_collective_with_ring_bytes(compile_spec):
    compiled = compile_spec(MODEL.format(block="llama") + "mesh { tp 2  sp }")
    graph = compiled.graph
    steps = {step.name: step for step in compiled.program.steps}
    seen = 0
    for _, data in graph.nodes(data=True):
        step = steps.get(data["name"])
        kind = backward_kind(step) if step else None
        assert data.get("backward") == kind
        if kind is not None:
            seen += 1
            # an AllGather or ReduceScatter of the whole [4, 8, 32] fp32 stream: (n-1)/n of it, n = 2
            assert data["backward_wire_bytes"] == 4 * 8 * 32 * 4 // 2
    assert seen == 4 * 2  # 4 collectives per layer, 2 layers, one tensor-parallel group
    assert {pair.backward for pair in PAIRS.values()} == {None, "allreduce", "reducescatter", "allgather", "alltoall", "dispatch", "combine"}
