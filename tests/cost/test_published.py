"""Three published training runs, each a spec in specs/ with the settings its source states: the
report must find that each fits the GPU it ran on, and its step time must be within 25% of the one
the published throughput implies.

The published figures are teraFLOP/s per GPU, counted with the papers' own closed form for a GPT
layer stack (Narayanan et al. 2021, equation 3; Megatron-DeepSpeed, which trained BLOOM, counts
the same), which includes the forward pass that recomputation runs again:

    F = 96 B s l h^2 (1 + s / 6h + V / 16 l h)   FLOPs per step,

so a run of n GPUs at X FLOP/s each takes F / (n X) per step. That closed form shares nothing
with our cost model; the step time we compare is the report's, from the DAG and the hardware
profile (a100: NVIDIA's datasheet peak and link figures, compute at 50% of peak, set before these
runs were compared and not tuned to them; docs/cost.md).

Why 25%: the estimate runs compute and communication one after another (no overlap), gives every
kernel one efficiency, and models links with the alpha-beta ring model; the published figures are
end-to-end measurements that include the optimizer step and data loading. An estimate within a
quarter of a measurement is what a planner can rank deployments by; the test beside it shows the
bound discriminates (the same deployment on the wrong GPU misses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from par.codegen.cost.report import sections
from par.dsl import units
from par.dsl.checks.hwcheck import builtin_hardware
from par.dsl.cost import cost_of, spec_cost
from tests.cost.tiny import compile_spec

TOLERANCE = 0.25


@dataclass(frozen=True)
class Run:
    spec: str
    gpus: int
    batch: int  # sequences per step
    seq: int
    layers: int
    hidden: int
    vocab: int
    tflops: float  # published teraFLOP/s per GPU
    source: str

    def flops(self) -> float:
        b, s, layers, h, v = self.batch, self.seq, self.layers, self.hidden, self.vocab
        return 96 * b * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))

    def published_step(self) -> float:
        return self.flops() / (self.gpus * self.tflops * 1e12)


RUNS = [
    Run("gpt3_175b_a100", 384, 1536, 2048, 96, 12288, 51200, 153.0,
        "Narayanan et al., SC '21 (arXiv:2104.04473), Table 2: PTD parallelism, 174.6B, 384 GPUs, 153 TFLOP/s"),
    Run("bloom_176b_a100", 384, 2048, 2048, 70, 14336, 250880, 150.0,
        "BigScience, 'BigScience 176B Model' training notes: 'training throughput: about 150 TFLOPs'"),
    Run("gpt_3b6_a100", 64, 512, 2048, 30, 3072, 51200, 138.0,
        "Narayanan et al., SC '21 (arXiv:2104.04473), Table 1: 3.6B, tp 2, 64 GPUs, 138 TFLOP/s"),
]


@pytest.fixture(scope="module", params=RUNS, ids=lambda run: run.spec)
def published(request):
    run = request.param
    compiled = compile_spec(run.spec)
    return run, compiled, spec_cost(compiled)


@pytest.mark.slow
def test_each_published_layout_fits_the_gpu_it_ran_on(published):
    run, _, cost = published
    assert cost.hardware is not None and cost.hardware.memory_gb == 80
    assert cost.too_big() == [], f"{run.spec}: {[group.memory.total / 1e9 for group in cost.too_big()]} GB"


@pytest.mark.slow
def test_the_step_time_is_within_a_quarter_of_the_published_throughput(published):
    run, _, cost = published
    predicted = cost.estimate.step
    published_step = run.published_step()
    assert abs(predicted / published_step - 1) <= TOLERANCE, (
        f"{run.spec}: predicted {predicted:.2f} s per step, {run.source} implies {published_step:.2f} s"
    )


@pytest.mark.slow
def test_the_report_prints_the_per_gpu_throughput_the_papers_report(published):
    """The figure a planner reads beside the paper's: FLOP/s per device, recomputation included."""
    run, _, cost = published
    (step,) = [section for section in sections(cost) if section.title.startswith("Step time estimate")]
    (printed,) = [value for label, value in step.rows if label.startswith("FLOP/s per device (recomputation included")]
    ours = cost.run_flops() / (cost.estimate.step * len(cost.devices))
    assert printed == units.si(ours, "FLOP/s")
    assert abs(ours / (run.tflops * 1e12) - 1) <= TOLERANCE


@pytest.mark.slow
def test_the_flops_we_count_are_the_papers_closed_form(published):
    """The DAG's forward, backward and recomputed FLOPs over all devices against equation 3: the
    closed form counts only the matrix multiplications, we also count norms, activations and adds
    (replicated over tp), well under 1% more."""
    run, _, cost = published
    assert cost.run_flops() == pytest.approx(run.flops(), rel=0.01)


@pytest.mark.slow
def test_the_tolerance_tells_a_wrong_gpu_apart(published):
    """The same deployment costed on an H100 (3.2x the A100's peak) misses the A100 measurement:
    the comparison can fail."""
    run, compiled, _ = published
    predicted = cost_of(compiled.graph, hardware=builtin_hardware("h100")).estimate.step
    assert predicted / run.published_step() < 1 - TOLERANCE


@pytest.mark.slow
def test_bloom_fits_only_with_the_sharding_and_recomputation_it_used():
    """BLOOM's memory needs both settings its authors chose: without ZeRO 1 the fp32 master weights
    and Adam state of the first stage alone are 48 GB; without recomputation the second stage
    holds eleven microbatches of activations at once."""
    assert spec_cost(compile_spec("bloom_176b_a100", "zero=0")).too_big()
    assert spec_cost(compile_spec("bloom_176b_a100", "recompute=none")).too_big()
