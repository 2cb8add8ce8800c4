"""Per-device tables group devices with equal numbers into one row, and stay short at scale."""

from __future__ import annotations

import networkx as nx
import pytest

from par.codegen.cost.report import sections
from par.dsl import units
from par.dsl.cost import spec_cost
from par.dsl.cost.estimate import OUTSIDE_STAGES, Clock, node_durations
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


def test_a_stage_takes_its_slowest_device_running_its_ops_one_after_another():
    text = LLAMA.replace("microbatches 2", "microbatches 2  sp") + "hardware h100\n"  # collectives take time
    compiled = compile_source(text, "pp=3", "layers=5", "dp=2", "batch=8")
    graph = compiled.graph
    cost = spec_cost(compiled)
    durations = node_durations(graph, cost.transfers, Clock(cost.hardware))
    for stage in range(3):
        for duration, times in ((durations.forward, cost.estimate.stages.forward), (durations.backward, cost.estimate.stages.backward)):
            ranks = {rank for _, d in graph.nodes(data=True) if d["stage"] == stage for rank in d["devices"]}
            busy = [
                sum(duration[n] for n, d in graph.nodes(data=True) if rank in d["devices"] and d["op"] not in OUTSIDE_STAGES)
                for rank in ranks
            ]
            assert times[stage] == pytest.approx(max(busy))


def test_swiglu_gate_and_up_do_not_overlap_on_one_device():
    """Without hardware a stage's forward takes its FLOPs: the device runs gate, then up."""
    compiled = compile_source(LLAMA, "tp=1", "pp=1")
    cost = spec_cost(compiled)
    assert cost.estimate.stages.forward == (float(cost.devices[0].flops),)
    assert cost.estimate.stages.backward == (2.0 * cost.devices[0].flops,)
