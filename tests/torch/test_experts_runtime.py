"""Mixture-of-experts model.py on gloo: real routing against the dense Reference, and the token
routings' trace against the DAG.

Reference computes every expert on every token and weights them by the router (zero for the
experts a token was not routed to); the sharded layer groups tokens by expert, dispatches them
to the ranks holding their experts with exchanged split sizes, and combines them back. One
launch per layout runs `--check --trace`: outputs and every gradient within 1e-5 in fp32, each
rank's forward collectives the DAG's (dispatch and combine in op and group), the split sizes
of every dispatch agreeing between sender and receiver, and everything else sending what the
cost model counts. Mutated model.py files (a wrong expert-to-rank mapping, an un-weighted
sum, the router's gradient left partial) fail the check.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from checked_run import sent_bytes  # noqa: E402
from dag_trace import ROUTINGS, trace_problems  # noqa: E402
from fork_launch import launch  # noqa: E402
from small_models import compile_source, read_trace, write_model  # noqa: E402

from par.dsl.cost import per_rank_comm  # noqa: E402

HIDDEN, TOP_K = 32, 2
SPEC = f"""
model moe : mixtral {{
  layers 2  hidden {HIDDEN}  heads 4  kv_heads 2  ffn 48
  experts 4  top_k {TOP_K}
  batch 8  seq 8  dtype fp32
}}
mesh {{ tp 1  dp 4  ep 4 }}
"""
# Together: ep 2 and 4 (ep 1, no dispatch: tests/hf/test_mixtral_layer.py); tp 1 and 2; pp 1 and 2; both
# routers; a shared expert; expert gradients reduced over one rank or over two; the auxiliary
# load-balancing loss (Reference computes it per replica's microbatch).
LAYOUTS = {
    "ep4 of dp4, topk_softmax, shared expert": ["router=topk_softmax", "router_norm=false", "shared_experts=1"],
    "ep2 of dp4, expert gradients over 2 ranks, aux loss": ["ep=2", "router_aux_loss_coef=0.5", "microbatches=2"],
    "tp2 x pp2 x dp2, ep2, sp, aux loss, vocabulary": [
        "tp=2", "pp=2", "dp=2", "ep=2", "sp=on", "router_aux_loss_coef=0.5", "vocab=100",
    ],
}


def _check(compiled, workdir, mutate=None):
    path = write_model(compiled, workdir)
    if mutate is not None:
        text = path.read_text()
        old, new = mutate
        assert old in text, old
        path.write_text(text.replace(old, new))
    world = compiled.deployment.mesh.world
    results = launch(path, world, ["--check", "--trace", str(workdir / "trace")], workdir / "logs")
    return results, "\n".join(f"rank {r.rank} exit {r.exitcode}\n{r.stdout}{r.stderr}" for r in results)


# DeepSeek's shape: dense first layers, then routed experts beside a shared one, narrower than
# the dense MLP. Stage 0 holds the dense layer and a MoE one, stage 1 MoE layers only.
DEEPSEEK = f"""
model ds : llama 0..0, deepseek 1..layers - 1 {{
  layers 3  hidden {HIDDEN}  heads 4  ffn 64  vocab 100
  experts 4  top_k {TOP_K}  expert_ffn 16  shared_experts 1
  batch 8  seq 8  dtype fp32
}}
mesh {{ tp 2  pp 2  dp 2  ep 2  microbatches 2 }}
"""


@pytest.mark.parametrize("name", LAYOUTS)
def test_routed_experts_match_reference_and_the_dag(name, workdir):
    _held_to_reference_and_the_dag(compile_source(SPEC, *LAYOUTS[name]), workdir)


# ZeRO shards the dense training state over the data-parallel group and the experts' over the
# ranks holding the same experts: over 2 ranks at ep 2 of dp 4, over none at ep 4.
ZERO_LAYOUTS = {
    "zero 1, ep2 of dp4": ["ep=2", "microbatches=2", "zero=1"],
    "zero 2, ep2 of dp4": ["ep=2", "microbatches=2", "zero=2"],
    "zero 1, ep4 of dp4, experts not sharded": ["zero=1"],
}


@pytest.mark.parametrize("name", ZERO_LAYOUTS)
def test_zero_shards_the_experts_over_the_ranks_holding_them(name, workdir):
    """Each rank's part of the dense and the experts' reduced gradients equals Reference's, the
    weights come back whole from the AllGathers over both groups, and the trace's ReduceScatters and
    AllGathers are the cost model's."""
    results = _held_to_reference_and_the_dag(compile_source(SPEC, *ZERO_LAYOUTS[name]), workdir)
    assert "gave every rank its weights back" in results[0].stdout


def test_a_block_per_range_of_layers_matches_reference_and_the_dag(workdir):
    """Each layer runs its block's class (dense llama, then deepseek's experts), on tp 2 x pp 2 x ep 2."""
    compiled = compile_source(DEEPSEEK)
    text = write_model(compiled, workdir / "text").read_text()
    assert "class LlamaLayer(" in text and "class DeepseekLayer(" in text and 'LAYER_BLOCKS = (\n    (0, 0, "llama"),' in text
    _held_to_reference_and_the_dag(compiled, workdir)


def _held_to_reference_and_the_dag(compiled, workdir):
    """Runs --check --trace on every rank and holds the traces to the DAG and the cost model; returns the runs."""
    results, report = _check(compiled, workdir)
    assert all(r.exitcode == 0 for r in results), report
    assert "check: OK" in results[0].stdout, report
    world = compiled.deployment.mesh.world
    traces = [read_trace(workdir / "trace", rank) for rank in range(world)]
    counted = per_rank_comm(compiled.graph, scope="step")
    tokens = compiled.deployment.model.batch // compiled.deployment.mesh.dp // compiled.deployment.mesh.microbatches * 8
    routings = 0
    for rank, events in enumerate(traces):
        assert trace_problems(compiled.graph, rank, events) == []
        sent: dict[str, Fraction] = {}
        for event in events:
            if event["op"] not in ROUTINGS:
                sent[event["op"]] = sent.get(event["op"], 0) + sent_bytes(event)
        balanced = {kind: total for kind, total in counted[rank].items() if kind not in ROUTINGS}
        assert {kind: float(total) for kind, total in sent.items() if total} == pytest.approx(balanced), rank
        for index, event in enumerate(e for e in events if e["op"] == "dispatch" and e["phase"] == "forward"):
            send, receive = event["splits"]
            # every one of the rank's tokens, TOP_K times, in rows of HIDDEN fp32 values
            assert sum(send) == tokens * TOP_K and event["bytes"] == sum(send) * HIDDEN * 4
            me = event["group"].index(rank)
            for member, peer in enumerate(event["group"]):
                theirs = [e for e in traces[peer] if e["op"] == "dispatch" and e["phase"] == "forward"][index]
                assert theirs["splits"][1][me] == send[member] and theirs["splits"][0][me] == receive[member]
            routings += 1
    if compiled.deployment.mesh.ep > 1:
        assert routings > 0
        # routing is uneven in general: the split sizes are not all the balanced share
        assert any(len(set(e["splits"][0])) > 1 for t in traces for e in t if e["op"] == "dispatch")
    return results


# Each mutation, and the layout it must fail on.
MUTATIONS = {
    # rank r holds the experts of rank ep - 1 - r, but tokens still go to rank r for them
    "wrong expert-to-rank mapping": (
        ["ep=2"],
        ("tensor = tensor.chunk(EP, dim=0)[ep_rank]", "tensor = tensor.chunk(EP, dim=0)[EP - 1 - ep_rank]"),
    ),
    # each token's results summed without the router's weights
    "un-weighted sum": (
        ["ep=2"],
        ("torch.bmm(routing.weights.unsqueeze(1), per_token)", "per_token.sum(dim=1, keepdim=True)"),
    ),
    # the router's weights meet partial results: without the AllReduce its gradient is partial
    "router gradient left partial": (
        ["tp=2", "dp=1", "ep=1", "batch=4"],
        ("route(copy_to_tp(self.moe_router(ln2), self.tp_group))", "route(self.moe_router(ln2))"),
    ),
    # ZeRO: each rank takes the experts' part of another rank of their group
    "experts' ZeRO part of another rank": (
        ["ep=2", "microbatches=2", "zero=1"],
        ("coordinates(rank)[0] // EP", "coordinates(rank)[0] % EP"),
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_mutated_moe_layer_fails_the_check(name, workdir):
    defines, mutation = MUTATIONS[name]
    results, report = _check(compile_source(SPEC, *defines), workdir, mutation)
    assert "check: MISMATCH" in results[0].stdout, report
