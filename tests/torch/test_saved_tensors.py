"""The cost model's activations are the tensors the generated code keeps for backward.

Measured with torch.autograd.graph.saved_tensors_hooks while one rank's shard of a stage runs
its forward in this process: every tensor autograd saves is counted once per storage (views of
one tensor are one tensor), parameters left out. The collectives' autograd pairs are swapped for
stand-ins that give the rank's result shape and keep nothing, which is what the real pairs keep
(`test_autograd_pairs_keep_no_tensor` holds that against the real ones on a one-rank group).
"""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from autograd_saves import measure  # noqa: E402
from fork_launch import load_module  # noqa: E402
from small_models import BLOCKS, SPECS, compile_small, compile_source, write_model  # noqa: E402

from par.codegen.pytorch.runtime import pairs  # noqa: E402
from par.dsl.compiler import compile_file  # noqa: E402
from par.dsl.cost.accounting import saved_bytes  # noqa: E402
from par.dsl.cost.model import cost_of  # noqa: E402
from par.dsl.registry.collectives import COLLECTIVES  # noqa: E402
from par.dsl.registry.ops import Saves  # noqa: E402
from tests.cost.tiny import megatron_layer_bytes  # noqa: E402

# Tiny builds of every shipped spec; tp as large as 4 heads allow, two stages where the spec has them.
SHIPPED = {
    "baseline": ("baseline_tp8_pp2", ["tp=2", "layers=4", "batch=4"]),
    "megatron tp4": ("megatron_tp8_pp2", ["tp=4", "layers=4", "batch=4"]),
    "megatron tp1": ("megatron_tp8_pp2", ["tp=1", "layers=4", "batch=4"]),
    "layerwise": ("layerwise", ["tp=2", "pp=2", "layers=4", "stages=2,2", "batch=4", "microbatches=2"]),
    "llama": ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2"]),
    # the model's ends: learned positions on sequence shards, a tied head over two stages; without sp
    "llama tied, positions": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2",
                      "tie_embeddings=true", "positions=learned"],
    ),
    "llama without sp": ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "sp=off"]),
    "llama mha": ("llama_gqa", ["heads=4", "kv_heads=4", "tp=4", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2"]),
    # Low precision: norm statistics (fp32 on CUDA, the dtype on CPU) and RMSNorm's fp32 copies.
    "megatron fp16": ("megatron_tp8_pp2", ["tp=2", "layers=4", "batch=4", "dtype=fp16"]),
    # Routed experts over ep 2 (the dispatch and combine stand in as balanced routing), a shared expert.
    "mixtral ep2, shared expert": (
        "mixtral_8x7b", ["tp=2", "pp=2", "dp=2", "ep=2", "layers=2", "batch=8", "microbatches=2", "kv_heads=2", "experts=4",
                         "shared_experts=1", "expert_ffn=128"],
    ),
    "llama bf16": ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "dtype=bf16"]),
    # Context parallelism: the ring keeps its queries, the merged output and its logsumexp, no block.
    "llama tp2 x cp2, ring": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "cp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2",
                      "seq=16", "vocab=64"],
    ),
}
# More of context parallelism: cp 4 in bf16; the all-gather form, which keeps the gathered keys and
# values, the output and its logsumexp.
SHIPPED_SLOW = {
    "llama cp4, ring, bf16": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=1", "cp=4", "pp=1", "dp=1", "layers=2", "batch=4", "microbatches=2",
                      "seq=16", "dtype=bf16"],
    ),
    "llama cp2, allgather": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=1", "cp=2", "cp_attention=allgather", "pp=1", "dp=1", "layers=2",
                      "batch=4", "microbatches=2", "seq=16"],
    ),
}
# Activation recomputation (torch.utils.checkpoint; its first call imports torch._dynamo, seconds):
# selective keeps the attention core's input, not its logsumexp (nor, in fp32 grouped-query
# attention, the expanded K and V); full keeps each layer's input (a sequence shard under sp).
RECOMPUTED = {
    "megatron selective": ("megatron_tp8_pp2", ["tp=2", "layers=4", "batch=4", "recompute=selective"]),
    "megatron full": ("megatron_tp8_pp2", ["tp=2", "layers=4", "batch=4", "recompute=full"]),
    "llama selective": (
        "llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "recompute=selective"],
    ),
    "llama full": ("llama_gqa", ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "recompute=full"]),
}
TOLERANCE = 0.05


class _Keeps(torch.autograd.Function):
    """A stand-in collective: the forward gives `make(x)`, nothing is kept for backward."""

    @staticmethod
    def forward(ctx, x, make):
        return make(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _stand_ins(tp: int, local_experts: int = 1) -> dict:
    """The pairs as one rank sees their shapes: a gather repeats its part, a scatter keeps one; a
    token dispatch brings as many tokens as the rank sends (balanced routing), spread evenly
    over its local experts, and the combine takes them back."""

    def part(x, dim):
        return x.chunk(tp, dim=dim)[0].clone()  # a tensor of its own, as a scatter's result is (a chunk is a view of the whole)

    def dispatch(tokens, routing, group):
        share, rest = divmod(tokens.shape[0], local_experts)
        routing.local_counts = [share + rest] + [share] * (local_experts - 1)
        return _Keeps.apply(tokens, torch.clone)

    return {
        "all_reduce": lambda x, group: _Keeps.apply(x, torch.clone),
        "copy_to_tp": lambda x, group: _Keeps.apply(x, lambda t: t.view_as(t)),
        "all_gather": lambda x, *, dim, group: _Keeps.apply(x, lambda t: torch.cat([t] * tp, dim=dim)),
        "all_gather_to_tp": lambda x, *, dim, group: _Keeps.apply(x, lambda t: torch.cat([t] * tp, dim=dim)),
        "reduce_scatter": lambda x, *, dim, group: _Keeps.apply(x, lambda t: part(t, dim)),
        "scatter_to_tp": lambda x, *, dim, group: _Keeps.apply(x, lambda t: part(t, dim)),
        "all_to_all": lambda x, *, scatter_dim, gather_dim, group: _Keeps.apply(
            x, lambda t: torch.cat([t.chunk(tp, dim=scatter_dim)[0]] * tp, dim=gather_dim)
        ),
        "dispatch": dispatch,
        "combine": lambda x, routing, group: _Keeps.apply(x, torch.clone),
    }


def measured_stage(compiled, folder, stage: int, chunk: int = 0, device: str = "cpu") -> int:
    """What the code keeps for one microbatch's backward on rank 0 of `stage` (tp rank 0), on
    `device`; under the interleaved schedule, for the stage's `chunk`-th model chunk."""
    module = load_module(write_model(compiled, folder), f"saved_{id(folder)}_{stage}_{chunk}")
    for name, stand_in in _stand_ins(module.TP, getattr(module, "LOCAL_EXPERTS", 1)).items():
        if hasattr(module, name):
            setattr(module, name, stand_in)
    if hasattr(module, "_all_reduce"):  # the loss's AllReduces, in place: this rank's values stand for the group's
        module._all_reduce = lambda tensor, group, op=None: tensor
    cp = getattr(module, "CP", 1)
    if cp > 1:  # the ring passes each rank its own block; the AllGather repeats it: the shapes of cp ranks
        module._ring_exchange = lambda send, receive, groups: [receive.copy_(send)][:0]
        module._all_gather = lambda tensor, dim, group: torch.cat([tensor] * cp, dim=dim)
    groups = types.SimpleNamespace(
        tp=None, dp=None, ep=None, cp=None, stage=stage, tp_rank=0, dp_rank=0, cp_rank=0, rank=stage * module.TP * cp
    )
    torch.manual_seed(0)
    model = module.Stage(groups).to(device=device, dtype=module.DTYPE)
    model.chunk = chunk
    first, last = chunk * module.PP + stage == 0, chunk * module.PP + stage == len(module.STAGES) - 1  # the model's first and last chunk
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
    ends = hasattr(module, "VOCAB")  # token ids in on the first stage, the loss out of the last
    if ends and first:
        x = torch.randint(module.VOCAB, (module.STREAM_SHAPE[1], module.SEQ), device=device)  # [batch, seq]; the stream is [seq, batch, HIDDEN]
    else:
        x = torch.randn(module.STREAM_SHAPE, dtype=module.DTYPE, device=device, requires_grad=True)

    def forward(x):
        y = model(x)
        if ends and last:
            targets = module.next_tokens(torch.randint(module.VOCAB, (y.shape[0], module.SEQ), device=device))  # every rank's: whole
            return module.microbatch_loss(model, y, targets)
        return y

    total, y, storages = measure(forward, [x], list(model.parameters()))
    if not last and y.untyped_storage().data_ptr() not in storages:
        total += y.untyped_storage().nbytes()  # the schedule keeps the output for y.backward(grad)
    return total


def _compare(compiled, folder) -> None:
    mesh = compiled.deployment.mesh
    counted = saved_bytes(compiled.graph, on_cpu=True)
    for stage in range(mesh.pp):
        measured = measured_stage(compiled, folder / f"stage{stage}", stage)
        rank = mesh.rank(dp_rank=0, stage=stage, tp_rank=0)  # cp rank 0
        assert counted[rank] == pytest.approx(measured, rel=TOLERANCE), (stage, counted[rank], measured)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_keeps_what_the_cost_model_counts(name, workdir):
    spec, defines = SHIPPED[name]
    _compare(compile_small(spec, defines), workdir)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECOMPUTED)
def test_recomputed_spec_keeps_what_the_cost_model_counts(name, workdir):
    spec, defines = RECOMPUTED[name]
    _compare(compile_small(spec, defines), workdir)


def test_interleaved_stages_keep_what_the_cost_model_counts_over_their_chunks(workdir):
    """Interleaved, a stage keeps for one microbatch what each of its chunks keeps: the embedding
    on the first chunk, the loss on the last, and each other chunk's output for its backward."""
    compiled = compile_small(
        "llama_gqa",
        ["heads=4", "kv_heads=2", "tp=2", "pp=2", "dp=1", "layers=4", "batch=4", "microbatches=2", "vocab=64",
         "schedule=interleaved", "chunks=2"],
    )
    counted = saved_bytes(compiled.graph, on_cpu=True)
    for stage in range(2):
        measured = sum(measured_stage(compiled, workdir / f"stage{stage}_{chunk}", stage, chunk) for chunk in range(2))
        assert counted[stage * 2] == pytest.approx(measured, rel=TOLERANCE), (stage, counted[stage * 2], measured)


@pytest.mark.slow  # over a second each
@pytest.mark.parametrize("name", SHIPPED_SLOW)
def test_more_context_parallel_specs_keep_what_the_cost_model_counts(name, workdir):
    spec, defines = SHIPPED_SLOW[name]
    _compare(compile_small(spec, defines), workdir)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_keeps_what_the_cost_model_counts(name, workdir):
    _compare(compile_source(BLOCKS[name]), workdir)


def test_megatron_report_matches_the_measured_layer_scaled_by_the_closed_form(workdir):
    """specs/megatron_tp8_pp2.par at tp 8: one layer measured at a tiny size equals the closed
    form there, and the report's activations at full size are within 5 % of the closed form."""
    tiny = compile_small("megatron_tp8_pp2", ["tp=8", "heads=8", "pp=1", "layers=2", "batch=4", "microbatches=2"])
    model, mesh = tiny.deployment.model, tiny.deployment.mesh
    b, s = model.batch // mesh.dp // mesh.microbatches, model.seq
    fp32 = 4
    layer = megatron_layer_bytes(b, s, model.hidden, model.ffn, model.heads, mesh.tp, fp32)
    assert measured_stage(tiny, workdir, 0) == pytest.approx(model.layers * layer, rel=0.01)

    full = compile_file(SPECS / "megatron_tp8_pp2.par")
    model, mesh = full.deployment.model, full.deployment.mesh
    b, s, h = model.batch // mesh.dp // mesh.microbatches, model.seq, model.hidden
    layer = megatron_layer_bytes(b, s, h, model.ffn, model.heads, mesh.tp, 2)
    for cost in cost_of(full.graph, hardware=None).devices:
        sent = b * s * h * 2 if cost.stage < mesh.pp - 1 else 0  # the output the schedule keeps
        assert cost.activation_bytes == pytest.approx(len(cost.layers) * layer + sent, rel=TOLERANCE)


@pytest.fixture
def one_rank_group():
    """A gloo group of this process alone: the pairs run, each collective on one rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_autograd_pairs_keep_no_tensor(one_rank_group):
    """What the registry declares for every collective (`saves`, nothing) and the stand-ins keep."""
    group = one_rank_group
    x = torch.randn(2, 4, 6, requires_grad=True)
    calls = {
        "all_reduce": lambda: pairs.all_reduce(x * 1, group),
        "copy_to_tp": lambda: pairs.copy_to_tp(x * 1, group),
        "all_gather": lambda: pairs.all_gather(x * 1, dim=1, group=group),
        "all_gather_to_tp": lambda: pairs.all_gather_to_tp(x * 1, dim=2, group=group),
        "reduce_scatter": lambda: pairs.reduce_scatter(x * 1, dim=1, group=group),
        "all_to_all": lambda: pairs.all_to_all(x * 1, scatter_dim=2, gather_dim=1, group=group),
        "scatter_to_tp": lambda: pairs.scatter_to_tp(x * 1, dim=2, group=group),
    }
    for name, call in calls.items():
        total, out, _ = measure(call, [], [])
        assert total == 0, name
        out.sum().backward()  # the pair runs its backward without anything saved
    declared = [spec.saves for name, spec in COLLECTIVES.items() if name != "send"]
    assert all(saves == Saves() for saves in declared)
