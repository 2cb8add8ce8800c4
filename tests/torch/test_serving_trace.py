"""Generation as the serving DAGs and cost describe it (docs/language.md, Serving): one launch of
model.py --generate at tp 2 x pp 2 with sequence parallelism in the prefill, two microbatches in
flight, greedy. Every rank's trace of each step, prefill and decode, is the collectives and
Send/Recv of dag.prefill or dag.decode on that rank (kind, group, bytes, peer, in DAG order),
including the sampled tokens' return from the last stage to the first in every decode step; the
KV cache model.py allocates is the serving cost's. The decode DAG without the tokens' return
(as it was) is caught on the same traces."""

from __future__ import annotations

import re

import networkx as nx
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # launches model.py on four processes

from dag_trace import dag_collectives, generation_problems  # noqa: E402
from fork_launch import launch  # noqa: E402
from small_models import compile_source, read_trace, write_model  # noqa: E402

from par.dsl.cost.serving import spec_serving_cost  # noqa: E402

PROMPT, NEW = 4, 3
# GQA (one KV head per rank at tp 2), one layer per stage, the cache in bf16 beside fp32 weights
SPEC = f"""
model m : llama {{ layers 2  hidden 64  heads 4  kv_heads 2  ffn 128  batch 8  seq 16  vocab 101  dtype fp32 }}
mesh {{ tp 2  pp 2  microbatches 2  sp }}
serve {{ prompt {PROMPT}  generate {NEW}  kv_dtype bf16 }}
"""


def test_generation_issues_the_serving_dags_collectives_and_allocates_the_costs_kv_cache(workdir):
    compiled = compile_source(SPEC)
    phases = dict(compiled.phases)
    prefill, decode = phases["prefill"].graph, phases["decode"].graph
    argv = ["--prompt-len", str(PROMPT), "--max-new", str(NEW), "--trace", str(workdir / "trace")]  # the spec's kv_dtype
    results = launch(write_model(compiled, workdir), 4, argv, workdir / "logs")
    assert all(r.exitcode == 0 for r in results), "\n".join(r.stdout + r.stderr for r in results)
    traces = [read_trace(workdir / "trace", rank) for rank in range(4)]

    for rank, events in enumerate(traces):
        assert generation_problems(prefill, decode, rank, events, NEW) == []
    # what the DAGs hold there: sequence parallelism in the prefill only; the tokens' return
    first, last = dag_collectives(decode, 0), dag_collectives(decode, 2)
    assert first[0] == {"op": "recv", "group": [0], "bytes": 4 * 8, "peer": 2}  # 4 sequences' int64 ids
    assert last[0] == {"op": "send", "group": [2], "bytes": 4 * 8, "peer": 0}
    assert [e["op"] for e in dag_collectives(prefill, 0)][:2] == ["reducescatter", "allgather"]
    assert "reducescatter" not in [e["op"] for e in first + last]

    # KV cache: 2 (K, V) x 1 layer x 8 sequences x 1 KV head x context 7 x head_dim 16 x 2 bytes
    (line,) = [line for r in results for line in r.stdout.splitlines() if "KV cache" in line]
    printed = int(re.search(r"KV cache ([\d,]+) bytes per rank", line).group(1).replace(",", ""))
    assert printed == 2 * 1 * 8 * 1 * (PROMPT + NEW) * 16 * 2
    cost = spec_serving_cost(compiled)
    for phase in (cost.prefill, cost.decode):
        assert {cost.kv_bytes(device) for device in phase.devices} == {printed}  # every rank alike here

    # the decode DAG without the tokens' return from the last stage to the first
    stale = nx.DiGraph(decode)
    for rank in (0, 1):
        (send,) = stale.predecessors(f"token_recv_gpu{rank}")
        stale.add_edges_from(("input", after) for after in stale.successors(f"token_recv_gpu{rank}"))
        stale.remove_nodes_from([send, f"token_recv_gpu{rank}"])
    for node in ("stage_1_recv_gpu2", "stage_1_recv_gpu3"):
        del stale.nodes[node]["after"]
    for rank, events in enumerate(traces):
        problems = generation_problems(prefill, stale, rank, events, NEW)
        assert len(problems) == 2 * (NEW - 1), problems  # every decode step of both microbatches
