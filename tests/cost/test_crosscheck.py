"""Forward bytes per rank from the DAG against the lowered Program (one layer, before expansion)."""

from __future__ import annotations

import pytest

from par.dsl.cost import per_rank_comm
from par.dsl.registry.ops import elements
from tests.cost.tiny import GPT, LLAMA, compile_source


def _expected(compiled) -> dict[int, dict[str, int]]:
    """Ring bytes of each collective step of the layer, times the layers a rank holds, plus the stage send."""
    program, mesh = compiled.program, compiled.deployment.mesh
    size = compiled.deployment.model.dtype_bytes
    layer: dict[str, int] = {}
    for step in program.collectives:
        numerator, denominator = step.wire_fraction
        layer[step.op] = layer.get(step.op, 0) + elements(step.global_out) * size * numerator // denominator
    expected = {}
    for rank in range(mesh.world):
        _, stage, _ = mesh.coords(rank)
        first, last = mesh.stages[stage]
        kinds = {op: sent * (last - first + 1) for op, sent in layer.items() if sent}
        if stage + 1 < mesh.pp:
            kinds["send"] = elements(program.stream_local) * size
        expected[rank] = kinds
    return expected


@pytest.mark.parametrize("text", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize(
    "defines",
    [("tp=1",), ("tp=2",), ("tp=2", "sp=on"), ("tp=2", "pp=2", "dp=2"), ("tp=2", "pp=1", "dp=2", "sp=on", "batch=16"), ("tp=2", "pp=4")],
    ids=str,
)
def test_dag_bytes_per_rank_match_the_program(text, defines):
    compiled = compile_source(text, *defines)
    assert per_rank_comm(compiled.graph, scope="microbatch") == _expected(compiled)
