"""The baseline (explicit AllGathers) against Megatron placement of the same model, side by side."""

from __future__ import annotations

from par.cli import main
from par.codegen.cost.text import comparison
from par.dsl import units
from par.dsl.cost import cost_of, rank_costs
from tests.cost.tiny import SMALL, SPECS, compile_spec

FP16 = 2


def _pair():
    return compile_spec("baseline_tp8_pp2", *SMALL), compile_spec("megatron_tp8_pp2", *SMALL)


def _closed_forms(compiled):
    model, mesh = compiled.deployment.model, compiled.deployment.mesh
    b, s, h, t, ffn = model.batch // mesh.microbatches, model.seq, model.hidden, mesh.tp, model.ffn
    gathers = (t - 1) * b * s * 3 * h * FP16 // t + (t - 1) * b * s * ffn * FP16 // t  # QKV and FC1 outputs
    # Attention on all heads instead of h/t of them, GELU on all of FC1 instead of ffn/t.
    replicated = 4 * b * s * s * h * (t - 1) // t + 8 * b * s * ffn * (t - 1) // t
    return gathers, replicated


def test_extra_allgathers_and_replicated_compute_per_layer():
    baseline, megatron = _pair()
    gathers, replicated = _closed_forms(baseline)
    for base, mega in zip(rank_costs(baseline.graph), rank_costs(megatron.graph), strict=True):
        layers = len(base.layers)
        assert base.comm["forward"]["allgather"] - mega.comm["forward"].get("allgather", 0) == layers * gathers
        assert base.comm["forward"]["allreduce"] == mega.comm["forward"]["allreduce"]
        assert base.flops - mega.flops == layers * replicated
        assert base.params == mega.params


def test_side_by_side_shows_the_differences():
    baseline, megatron = _pair()
    gathers, replicated = _closed_forms(baseline)
    layers = 2  # 4 layers over 2 stages
    section = comparison([cost_of(megatron.graph, hardware=None), cost_of(baseline.graph, hardware=None)])
    rows = {row[0]: row for row in section.rows}
    allgather = rows["allgather sent fwd/mb per device (max)"]
    assert allgather[1:] == ("0 B", units.size(layers * gathers), f"+{units.size(layers * gathers)} (new)")
    per_layer = rows["allgather sent fwd/mb per layer (gpu 0)"]
    assert per_layer[1:3] == ("0 B", units.size(gathers))  # the two AllGathers of one layer
    assert rows["FLOP fwd/mb per layer (gpu 0)"][3].startswith(f"+{units.flop(replicated)} (")
    flops = rows["FLOP fwd/mb per device (max)"]
    mega_flops = max(c.flops for c in rank_costs(megatron.graph))
    percent = layers * replicated / mega_flops * 100
    assert flops[3] == f"+{units.flop(layers * replicated)} ({percent:+.1f}%)"
    assert rows["devices"][3] == "same"
    # Kinds neither spec sends have no rows; other metrics stay even when neither has a value.
    assert not [label for label in rows if label.startswith(("alltoall", "reducescatter"))]
    assert rows["step time (estimate)"][1:] == ("-", "-", "-")


def test_par_cost_prints_both_and_the_comparison(capsys):
    defines = [arg for define in SMALL for arg in ("-D", define)]
    code = main(["cost", str(SPECS / "baseline_tp8_pp2.par"), str(SPECS / "megatron_tp8_pp2.par"), *defines])
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("baseline_tp8_pp2 (") < out.index("megatron_tp8_pp2 (") < out.index("Side by side")
    baseline, _ = _pair()
    gathers, _ = _closed_forms(baseline)
    line = next(line for line in out.splitlines() if line.startswith("allgather sent fwd/mb"))
    assert f"-{units.size(2 * gathers)} (-100.0%)" in line
