"""Per-device accounting against closed forms derived from the model sizes, not from the DAG."""

from __future__ import annotations

import pytest

from par.dsl.cost import per_rank_comm, rank_costs
from par.dsl.cost.accounting import model_parameters, training_state
from tests.cost.tiny import GPT, LLAMA, SMALL, compile_source, compile_spec, megatron_layer_bytes

FP16 = 2


def _sizes(compiled):
    model, mesh = compiled.deployment.model, compiled.deployment.mesh
    b = model.batch // (mesh.dp * mesh.microbatches)
    return model, mesh, b, model.seq, model.hidden


def _layers_on(mesh, stage):
    first, last = mesh.stages[stage]
    return last - first + 1


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_megatron_forward_sends_two_allreduces_of_bsh_per_layer(tp):
    compiled = compile_spec("megatron_tp8_pp2", *SMALL, f"tp={tp}")
    model, mesh, b, s, h = _sizes(compiled)
    allreduce = 2 * (tp - 1) * b * s * h * FP16 // tp  # 2(t-1)/t of the b*s*h tensor
    comm = per_rank_comm(compiled.graph, scope="microbatch")
    for rank in range(mesh.world):
        stage = (rank // tp) % mesh.pp
        assert comm[rank]["allreduce"] == 2 * _layers_on(mesh, stage) * allreduce
        assert "allgather" not in comm[rank] and "reducescatter" not in comm[rank]


def test_megatron_step_adds_backward_allreduces_and_pipeline_gradients():
    compiled = compile_spec("megatron_tp8_pp2", *SMALL, "tp=4", "microbatches=4")
    model, mesh, b, s, h = _sizes(compiled)
    allreduce = 2 * 3 * b * s * h * FP16 // 4
    stream = b * s * h * FP16
    step = per_rank_comm(compiled.graph, scope="step")
    m = mesh.microbatches
    for rank in range(mesh.world):
        stage = (rank // 4) % mesh.pp
        layers = _layers_on(mesh, stage)
        # Forward: 2 AllReduces per layer; backward: 2 more (the inputs of QKV and FC1).
        assert step[rank]["allreduce"] == m * (2 + 2) * layers * allreduce
        # Stage 0 sends activations forward, stage 1 sends their gradients back.
        assert step[rank]["send"] == m * stream


def test_baseline_backward_sends_no_reduce_scatter_for_what_forward_gathered():
    # each rank reads only its own heads of the gathered QKV and its own columns of the gathered
    # FC1 output, so the gradients are zero elsewhere: the backward keeps this rank's part, and
    # only the AllReduces of the QKV and FC1 inputs' gradients remain
    compiled = compile_spec("baseline_tp8_pp2", *SMALL)
    model, mesh, b, s, h = _sizes(compiled)
    t = mesh.tp
    gathered = (t - 1) * b * s * (3 * h + model.ffn) * FP16 // t  # QKV and FC1 outputs, per layer
    copied = 2 * 2 * (t - 1) * b * s * h * FP16 // t  # ln1 and ln2 outputs, 2(t-1)/t each
    for cost in rank_costs(compiled.graph):
        layers = len(cost.layers)
        assert cost.comm["forward"]["allgather"] == layers * gathered
        assert {kind: sent for kind, sent in cost.comm["backward"].items() if kind != "send"} == {"allreduce": layers * copied}


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gpt_parameters_per_layer(tp):
    compiled = compile_source(GPT, f"tp={tp}", "pp=1")
    model = compiled.deployment.model
    h, layers = model.hidden, model.layers
    # Linears without bias: QKV 3h^2, out h^2, FC1 and FC2 2*h*ffn (12h^2 when ffn = 4h); two LayerNorms 2h each.
    per_layer = 3 * h * h + h * h + 2 * h * model.ffn + 4 * h
    assert model.ffn == 4 * h and per_layer == 12 * h * h + 4 * h
    assert model_parameters(compiled.graph) == layers * per_layer
    held = sum(cost.params for cost in rank_costs(compiled.graph))
    assert held == layers * (per_layer - 4 * h + 4 * h * tp)  # the norms are copied on every tp rank


@pytest.mark.parametrize("tp", [1, 2])
def test_llama_parameters_per_layer(tp):
    compiled = compile_source(LLAMA, f"tp={tp}", "pp=1")
    model = compiled.deployment.model
    h, kv, d, ffn = model.hidden, model.kv_heads, model.head_dim, model.ffn
    # Q and O: h^2 each; K and V: h * kv_heads * head_dim each (grouped-query); gate, up, down; two RMSNorms.
    per_layer = 2 * h * h + 2 * h * kv * d + 3 * h * ffn + 2 * h
    assert kv < model.heads
    assert model_parameters(compiled.graph) == model.layers * per_layer


def test_linear_flops_are_2mnk():
    compiled = compile_source(GPT, "tp=4")
    model, mesh, b, s, h = _sizes(compiled)
    t, ffn = mesh.tp, model.ffn
    rows = b * s
    expected = {  # 2 * m * n * k with m = rows, k = in features, n = out features, per tp rank
        "qkv": 2 * rows * (3 * h // t) * h,
        "attn": 2 * rows * h * (h // t),
        "fc1": 2 * rows * (ffn // t) * h,
        "mlp": 2 * rows * h * (ffn // t),
    }
    seen = 0
    for _, data in compiled.graph.nodes(data=True):
        if data["op"] == "linear":
            assert data["flops"] == expected[data["name"]]
            seen += 1
    assert seen == 4 * model.layers * t


def test_rank_flops_sum_the_layer_closed_form():
    compiled = compile_source(GPT, "tp=4")
    model, mesh, b, s, h = _sizes(compiled)
    t, ffn = mesh.tp, model.ffn
    linears = 2 * b * s * (3 * h * h + h * h + 2 * h * ffn) // t
    attention = 4 * b * s * s * h // t  # QK^T and AV over the local heads
    elementwise = b * s * (2 * 5 * h + 8 * ffn // t + 2 * h)  # 2 layernorms, gelu, 2 adds
    for cost in rank_costs(compiled.graph):
        assert cost.flops == len(cost.layers) * (linears + attention + elementwise)


def test_megatron_activations_per_layer():
    compiled = compile_source(GPT, "tp=4", "pp=1")
    model, mesh, b, s, h = _sizes(compiled)
    per_layer = megatron_layer_bytes(b, s, h, model.ffn, model.heads, mesh.tp, FP16)
    for cost in rank_costs(compiled.graph):
        assert cost.activation_bytes == model.layers * per_layer


def test_a_sending_stage_also_keeps_its_output():
    """The schedule keeps a stage's output until the gradient comes back; the last stage keeps
    the loss instead, and both keep their input (the first layer's norm saves it)."""
    compiled = compile_source(GPT, "tp=2", "pp=2")
    model, mesh, b, s, h = _sizes(compiled)
    costs = rank_costs(compiled.graph)
    assert costs[0].activation_bytes - costs[2].activation_bytes == b * s * h * FP16


def test_data_parallel_gradients_are_allreduced_once_per_step():
    compiled = compile_source(GPT, "tp=2", "pp=1", "dp=2")
    dp = 2
    step, micro = per_rank_comm(compiled.graph, scope="step"), per_rank_comm(compiled.graph, scope="microbatch")
    m = compiled.deployment.mesh.microbatches
    for cost in rank_costs(compiled.graph):
        grads = 2 * (dp - 1) * cost.params * 4 // dp  # gradients are reduced in fp32
        backward = cost.comm["backward"]["allreduce"]
        assert step[cost.rank]["allreduce"] == m * (micro[cost.rank]["allreduce"] + backward) + grads


def test_sequence_parallel_swaps_allreduces_for_gathers_and_scatters():
    compiled = compile_source(LLAMA, "tp=2", "sp=on", "pp=1")
    model, mesh, b, s, h = _sizes(compiled)
    t = mesh.tp
    part = (t - 1) * b * s * h * 2 // t  # one AllGather or ReduceScatter of the b*s*h stream
    for cost in rank_costs(compiled.graph):
        layers = len(cost.layers)
        assert cost.comm["forward"] == {"allgather": 2 * layers * part, "reducescatter": 2 * layers * part}
        assert cost.comm["backward"] == {"allgather": 2 * layers * part, "reducescatter": 2 * layers * part}
        # RMSNorm weights see only their sequence shard: their gradients are summed over the tp group.
        norms = 2 * layers * h
        assert cost.comm["gradients"] == {"allreduce": 2 * (t - 1) * norms * 4 // t}  # fp32 gradients


def test_scopes_are_checked():
    compiled = compile_source(GPT)
    with pytest.raises(ValueError, match="scope"):
        per_rank_comm(compiled.graph, scope="layer")


def test_training_state_follows_the_precision_the_code_runs():
    """fp32: weights, grads, m, v in fp32 (4 + 4 + 8). fp16/bf16: weights in the dtype, an fp32
    gradient buffer, fp32 master weights and m, v (2 + 4 + 4 + 8); gradients reduced in the
    model's dtype are kept twice by the code, in that dtype and as the fp32 copy AdamW reads (2 + 4)."""
    fp32 = training_state("fp32")
    assert (fp32.weights, fp32.grads, fp32.master, fp32.optimizer, fp32.total) == (4, 4, 0, 8, 16)
    for dtype in ("fp16", "bf16"):
        mixed = training_state(dtype)
        assert (mixed.weights, mixed.grads, mixed.master, mixed.optimizer, mixed.total) == (2, 4, 4, 8, 18)
        low = training_state(dtype, grad_dtype=dtype)
        assert (low.grads, low.total) == (2 + 4, 20)


# Blocks whose backward differs from "every AllGather reduce-scatters, every column input is
# AllReduced": the counts below follow from where each gradient is partial (docs/cost.md).
SIZES = "model tiny : b { layers 2  hidden 64  heads 8  ffn 256  batch 8  seq 16  dtype fp16 }\n"


def _backward_of_block(body: str, mesh: str):
    """(the sizes of `_sizes`, each rank's backward bytes by kind) for a block of 2 layers."""
    compiled = compile_source("block b(x) {\n" + body + "\n}\n" + SIZES + mesh)
    return _sizes(compiled), [cost.comm.get("backward", {}) for cost in rank_costs(compiled.graph)]


def test_a_gather_reaching_a_column_linear_through_gelu_is_reduce_scattered_and_nothing_else():
    body = "n = rmsnorm(x)\na = gelu(n)\nfc = linear(a, ffn, column)\nm = linear(fc, hidden, row)\nout = add(x, m)\nreturn out"
    (_, mesh, b, s, h), backward = _backward_of_block(body, "mesh { tp 4  microbatches 2  sp }\nplace allgather after n\n")
    part = (mesh.tp - 1) * b * s * h * FP16 // mesh.tp  # (t-1)/t of the b*s*h stream
    # gelu has no parameters: the gradient reaching the AllGather is partial, its ReduceScatter sums it
    assert backward == [{"reducescatter": 2 * part, "allgather": 2 * part}] * mesh.world


def test_a_gather_that_reaches_the_residual_keeps_its_part_and_its_column_reader_allreduces():
    body = (
        "ln = layernorm(x)\nfc = linear(ln, hidden, column)\ng = allgather(fc)\nup = linear(g, ffn, column)\n"
        "m = linear(up, hidden, row)\nh = add(x, g)\nout = add(h, m)\nreturn out"
    )
    (_, mesh, b, s, h), backward = _backward_of_block(body, "mesh { tp 4  microbatches 2 }")
    allreduce = 2 * (mesh.tp - 1) * b * s * h * FP16 // mesh.tp
    # the inputs of both column linears (ln and g) are AllReduced; g's gradient from the residual is whole
    assert backward == [{"allreduce": 2 * 2 * allreduce}] * mesh.world


def test_a_slice_of_a_replicated_tensor_whose_gradient_is_whole_gathers_it():
    body = (
        "ln = rmsnorm(x)\nqkv = linear(ln, 3 * hidden, replicated)\nctx = attention(qkv)\n"
        "attn = linear(ctx, hidden, row)\nout = add(x, attn)\nreturn out"
    )
    (_, mesh, b, s, h), backward = _backward_of_block(body, "mesh { tp 4  microbatches 2 }")
    part = (mesh.tp - 1) * b * s * h * FP16 // mesh.tp
    assert backward == [{"allgather": 2 * part}] * mesh.world  # of ctx's gradient, one per layer
