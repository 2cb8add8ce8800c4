"""A serving deployment's two programs: the prefill of the prompt and one decode step.

Each is the layer lowered for its phase (`phase_deployment`: the prompt's positions, or the
one new token of a decode step), then given a KV cache (`with_cache`): before every attention
a `kv_append` step writes the step's K and V into the cache of its layer, and the attention
reads the cache as its second operand. The decode step's attention reads every position the
cache holds (prompt + generate: static shapes, the positions not written yet masked), so its
FLOPs are those of one query against the whole context, and its tokens are those the step
before sampled, fed back from the last stage (`Ends.fed_back`). Nothing is trained: no step has
a backward pair.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from par.dsl.checks.deployment import Deployment, Serve
from par.dsl.lowering.program import Program, Step

Phase = Literal["prefill", "decode"]
PHASES: tuple[Phase, ...] = ("prefill", "decode")


def serve_of(deployment: Deployment) -> Serve:
    assert deployment.serve is not None  # only a serving deployment has phases
    return deployment.serve


def phase_deployment(deployment: Deployment, phase: Phase) -> Deployment:
    """The deployment one phase lowers: its microbatch holds the prompt (prefill) or each
    sequence's one new token (decode). The decode step must come from a deployment checked
    without sequence parallelism (one token cannot be split)."""
    serve = serve_of(deployment)
    assert phase == "prefill" or not deployment.mesh.sequence_parallel
    tokens = serve.prompt if phase == "prefill" else 1
    return replace(deployment, model=replace(deployment.model, seq=tokens))


def with_cache(program: Program, phase: Phase) -> Program:
    """The phase's program: a KV cache step before each attention, which reads it; no backward."""
    deployment = program.deployment
    serve, model = serve_of(deployment), deployment.model
    names = {step.name for step in program.steps}
    attentions = [step for step in program.steps if step.op == "attention"]
    steps: list[Step] = []
    for step in program.steps:
        (step,) = _forward_only((step,))
        if step.op != "attention":
            steps.append(step)
            continue
        name = "kv_append" if len(attentions) == 1 and "kv_append" not in names else f"kv_append_{step.name}"
        batch = step.global_in[0]
        heads_here = model.kv_heads * step.in_shape[-1] // step.global_in[-1]  # split by heads over tp, or whole
        global_cache = (2, batch, model.kv_heads, serve.context, model.head_dim)
        local_cache = (2, step.in_shape[0], heads_here, serve.context, model.head_dim)
        cache = Step(
            name=name,
            op="kv_append",
            kind="compute",
            inputs=(step.inputs[0],),
            in_placement=step.in_placement,
            out_placement=step.in_placement,
            in_shape=step.in_shape,
            out_shape=local_cache,
            global_in=step.global_in,
            global_out=global_cache,
            span=step.span,
            dtype=serve.kv_dtype,
        )
        flops = step.flops
        if phase == "decode":  # one query per sequence against every position of the cache
            batch_here, _, features = step.out_shape
            flops = 4 * batch_here * serve.context * features
        attention = replace(
            step,
            inputs=(step.inputs[0], name),
            operand_shapes=(step.in_shape, local_cache),
            operand_placements=(step.in_placement, step.in_placement),
            flops=flops,
        )
        steps += [cache, attention]
    ends = program.ends
    if ends is not None:
        ends = replace(ends, first=_forward_only(ends.first), last=_forward_only(ends.last), fed_back=phase == "decode")
    return replace(program, steps=tuple(steps), param_copied=False, ends=ends)


def _forward_only(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    return tuple(replace(step, pair=None, copied=False, backward_reason=None) for step in steps)
