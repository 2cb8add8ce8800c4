"""Per-device tables group devices with equal numbers into one row, and stay short at scale."""

from __future__ import annotations

import networkx as nx
import pytest

from par.codegen.cost import spec_cost
from par.codegen.cost.report import sections
from par.dsl import units
from par.dsl.cost.estimate import (
    OUTSIDE_STAGES,
    Clock,
    longest_paths,
    node_durations,
    stage_times,
)
from tests.cost.tiny import GPT, LLAMA, compile_source


def expand_cell(cell: str) -> set[int]:
    """The ranks a `gpu ...` cell names; `a-b, c-d, ..., y-z` continues the first two runs' stride."""
    parts = cell.removeprefix("gpu ").split(", ")
    spans = [tuple(map(int, part.split("-"))) if "-" in part else (int(part), int(part)) for part in parts if part != "..."]
    if "..." in parts:
        (a, b), (c, _), (y, _) = spans[0], spans[1], spans[-1]
        spans = [(start, start + b - a) for start in range(a, y + 1, c - a)]
    return {rank for first, last in spans for rank in range(first, last + 1)}


def oracle(graph: nx.DiGraph, rank: int) -> tuple:
    """One device's per-device columns, summed straight from the DAG nodes it runs."""
    mine = [data for _, data in graph.nodes(data=True) if rank in data["devices"]]
    params = sum(data["params"] for data in mine)
    flops = sum(data["flops"] for data in mine)
    sent = 0
    for _node, data in graph.nodes(data=True):
        if data["kind"] != "comm" or data["op"] == "recv":
            continue
        if data["devices"][0] == rank or (data["op"] != "send" and rank in data["devices"]):
            sent += data["wire_bytes"]
    layers = sorted({data["layer"] for data in mine if data["kind"] == "compute"})
    return units.ranges(layers), units.count(params), units.flop(flops), units.size(sent)


@pytest.mark.parametrize(
    "text, defines",
    [
        (GPT, ("tp=2", "pp=2", "dp=3", "batch=12")),
        (LLAMA, ("dp=2", "pp=3", "layers=5", "batch=8")),
        (LLAMA.replace("microbatches 2", "microbatches 2  sp"), ("dp=2", "batch=8")),
    ],
)
def test_grouped_rows_carry_every_member_s_own_numbers(text, defines):
    compiled = compile_source(text, *defines)
    graph, world = compiled.graph, compiled.deployment.mesh.world
    table = sections(spec_cost(compiled))[0]
    rows = table.rows[:-1]  # the last row is the total over all devices
    covered: list[int] = []
    for devices, stage, layers, params, flops, _activations, sent, _step in rows:
        members = expand_cell(devices)
        covered += members
        for rank in members:
            assert (layers, params, flops, sent) == oracle(graph, rank), rank
            assert int(stage) == compiled.deployment.mesh.coords(rank)[1]
    assert sorted(covered) == list(range(world))  # every device in exactly one row
    # Grouped as far as the numbers allow: no two rows show the same numbers.
    assert len({row[1:] for row in rows}) == len(rows)


def test_a_wide_data_parallel_mesh_keeps_one_row_per_stage_and_short_cells():
    compiled = compile_source(GPT, "tp=2", "pp=2", "dp=64", "batch=256")
    cost = spec_cost(compiled)
    per_device, memory, comm = sections(cost)[:3]
    assert len(per_device.rows) == 2 + 1 and len(memory.rows) == 2
    assert {row[0] for row in comm.rows} == {row[0] for row in memory.rows}
    assert per_device.rows[0][0] == "gpu 0-1, 4-5, ..., 252-253"
    for row in per_device.rows[:-1]:
        assert len(row[0]) < 40
        assert len(expand_cell(row[0])) == 2 * 64
    assert per_device.rows[-1][0] == "all 256 devices"


@pytest.mark.parametrize(
    "numbers, text",
    [
        ([0, 1, 4, 5, 8, 9, 12, 13, 16, 17], "0-1, 4-5, ..., 16-17"),
        ([0, 1, 4, 5, 8, 9, 12, 13], "0-1, 4-5, 8-9, 12-13"),  # four runs: all listed
        ([0, 4, 8, 12, 16], "0, 4, ..., 16"),
        ([0, 1, 4, 5, 8, 9, 12, 13, 17, 18], "0-1, 4-5, 8-9, 12-13, 17-18"),  # the stride breaks
        ([0, 1, 4, 5, 8, 9, 12, 13, 16], "0-1, 4-5, 8-9, 12-13, 16"),  # the last run is short
        ([3, 2, 1, 2], "1-3"),
        ([], ""),
    ],
)
def test_strided_ranges(numbers, text):
    assert units.strided_ranges(numbers) == text
    if text:
        assert expand_cell(text) == set(numbers)


def _path_length_by_networkx(graph: nx.DiGraph, duration: dict[str, float], nodes: set[str]) -> float:
    """Longest node-weighted path inside `nodes`: an edge into v weighs v, from a start joined to all."""
    weighted = nx.DiGraph()
    weighted.add_weighted_edges_from((u, v, duration[v]) for u, v in graph.subgraph(nodes).edges)
    weighted.add_weighted_edges_from(("<start>", v, duration[v]) for v in nodes)
    return nx.dag_longest_path_length(weighted)


def test_stage_critical_paths_match_networkx_on_each_stage_alone():
    text = LLAMA.replace("microbatches 2", "microbatches 2  sp") + "hardware h100\n"  # collectives take time
    compiled = compile_source(text, "pp=3", "layers=5", "dp=2", "batch=8")
    graph = compiled.graph
    cost = spec_cost(compiled)
    clock = Clock(cost.hardware)
    durations = node_durations(graph, cost.transfers, clock)
    times = stage_times(graph, durations, cost.transfers, clock, order=list(nx.topological_sort(graph)))
    for stage in range(3):
        nodes = {n for n, d in graph.nodes(data=True) if d["stage"] == stage and d["op"] not in OUTSIDE_STAGES}
        assert times.forward[stage] == pytest.approx(_path_length_by_networkx(graph, durations.forward, nodes))
        assert times.backward[stage] == pytest.approx(_path_length_by_networkx(graph, durations.backward, nodes))
    assert times.forward == cost.estimate.stages.forward


def test_longest_paths_never_leave_their_part():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "d"), ("a", "e")])
    duration = {"a": 1.0, "b": 10.0, "c": 100.0, "d": 1000.0, "e": 5.0}
    part = {"a": 0, "b": 0, "c": 1, "d": 0, "e": 0}
    # d is in part 0 but its only way in goes through c (part 1): it starts a path of its own.
    assert longest_paths(graph, duration, part.get) == {0: 1000.0, 1: 100.0}
    assert longest_paths(graph, duration, {"a": 0, "e": 0}.get) == {0: 6.0}
