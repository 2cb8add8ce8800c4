"""The modes of model.py: `--check` (one step against Reference) and `--steps` (training)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from par.codegen.pytorch.runtime.batches import file_data, make_batch, microbatches, rank_data
from par.codegen.pytorch.runtime.checkpoint import load_requested, save_requested
from par.codegen.pytorch.runtime.groups import Groups, coordinates, cp_coordinate
from par.codegen.pytorch.runtime.model import Reference, Stage, reference_ends, reference_layer
from par.codegen.pytorch.runtime.optimizer import LossScaler, Optimizer
from par.codegen.pytorch.runtime.pipeline import PipelineSchedule
from par.codegen.pytorch.runtime.sharding import build_stage, parameter_names, shard_state_dict
from par.codegen.pytorch.runtime.spec import (
    BATCH,
    CP,
    DP,
    DTYPE,
    ENDS,
    HF_CHECKPOINT,
    LAYERS,
    LOSS_SCALING,
    MICROBATCHES,
    PP,
    SCHEDULE,
    SEQ,
    SEQUENCE_PARALLEL,
    STAGE_LAYERS,
    STAGES,
    TP,
    WORLD_SIZE,
    ZERO,
)
from par.codegen.pytorch.runtime.step import GradientBuffer, gradients, train_step
from par.codegen.pytorch.runtime.zero import part_of

# -- Modes --------------------------------------------------------------------------------------


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return ((actual.float() - expected.float()).abs().max() / scale.float()).item()


def derived_tolerance() -> tuple[float, str]:
    """--check's tolerance for DTYPE, and how it was derived.

    The sharded step rounds to DTYPE where Reference keeps fp32. Rounding errors of either sign
    add up like a random walk: after k roundings of relative size eps / 2 the error is about
    eps / 2 * sqrt(k) (Higham and Mary's probabilistic bound); the factor 4 is the margin. A
    gradient passes through the backward of every layer and sums over the tokens of a
    microbatch, whose partial sums are rounded to DTYPE (torch's norm kernels on CPU do), so
    k = LAYERS * tokens. fp32 keeps 1e-5 at least: there only the order of the sums differs.
    """
    eps = torch.finfo(DTYPE).eps
    tokens = BATCH // DP // MICROBATCHES * SEQ
    derived = 2 * eps * (LAYERS * tokens) ** 0.5
    return max(1e-5, derived), f"2 eps sqrt(layers x tokens) = 2 x {eps:.3g} x sqrt({LAYERS} x {tokens}), at least 1e-5"


def reference_step(reference: Reference, seed: int) -> torch.Tensor:
    """Reference's forward and backward on the whole batch, in fp32: its outputs; its gradients stay on its parameters.

    The inputs are rounded to DTYPE first, as the sharded step's are.
    """
    reference.float()
    device = next(reference.parameters()).device
    batches = [make_batch(dp_rank, seed) for dp_rank in range(DP)]
    if ENDS:
        inputs, targets = (torch.cat(parts).to(device=device) for parts in zip(*batches, strict=True))
        logits = reference(inputs)
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
        # The loss of each replica's batch; their mean is the whole batch's (each has as many targets).
        replicas = torch.stack(
            [
                part.sum() / (mask >= 0).sum()
                for part, mask in zip(per_token.view(targets.shape).chunk(DP), targets.chunk(DP), strict=True)
            ]
        )
        replicas.mean().backward()
        return replicas.detach()
    else:
        inputs, targets = (torch.cat(parts).to(device, DTYPE).float() for parts in zip(*batches, strict=True))
        expected = reference(inputs)
        F.mse_loss(expected, targets).backward()
        return expected.detach()


def compared(expected: torch.Tensor, reference_grads: dict[str, torch.Tensor], rank: int) -> list[torch.Tensor]:
    """What `rank` compares, from Reference's outputs and gradients: on the last stage its replica's
    loss (with a vocabulary) or its part of each output microbatch, then the gradient of each
    parameter it holds, sliced as it holds it."""
    dp_rank, stage, tp_rank = coordinates(rank)
    outputs: list[torch.Tensor] = []
    if stage == PP - 1:
        if ENDS:
            outputs = [expected[dp_rank].reshape(1)]
        else:
            outputs = microbatches(expected.chunk(DP)[dp_rank], tp_rank, expected.device, cp_coordinate(rank))
    shards = shard_state_dict(reference_grads, rank)
    return outputs + [shards[name] for name in parameter_names(rank)]


def check(groups: Groups, device: torch.device, seed: int, tolerance: float | None) -> bool:
    """One step of this rank and of Reference on the same weights and batch: are outputs and gradients equal?

    Reference computes in fp32 on the same weights and batch (rounded to DTYPE as this rank's are),
    so the errors are those of this rank's fp16/bf16 arithmetic alone. Only rank 0 builds it: it
    sends every other rank just what that rank compares, so no other rank holds the whole model.
    """
    reference = Reference(seed).to(device) if groups.rank == 0 else None
    weights = stage_weights(groups, seed) if reference is None else reference.state_dict()
    stage = build_stage(groups, device, weights)
    del weights

    data = rank_data(groups, seed, device)
    schedule = PipelineSchedule(stage, groups, device)
    buffer = GradientBuffer(stage)
    if LOSS_SCALING:
        scaler = LossScaler()
        schedule.loss_scale = scaler.scale
    outputs, step_losses = train_step(schedule, buffer, groups, data)
    if LOSS_SCALING:
        # fp16: the step as training runs it; a scale that overflows is halved and the step run again.
        while not scaler.unscale(buffer.main) and scaler.scale >= 1:
            buffer.zero()
            schedule.loss_scale = scaler.scale
            outputs, step_losses = train_step(schedule, buffer, groups, data)
    if ENDS:  # the model's output is its loss: this replica's, on the last stage
        outputs = [torch.stack(step_losses).sum().reshape(1)] if groups.stage == PP - 1 else []
        if CP > 1 and outputs:
            dist.all_reduce(outputs[0], group=groups.cp)  # not one of the model's: each part of the sequence's share

    grads = buffer.main_views
    if ZERO:  # the shapes of what Reference gives: each parameter's gradient (compared below as the rank's part)
        grads = dict(stage.named_parameters())
    names = parameter_names(groups.rank)
    if reference is not None:
        expected = reference_step(reference, seed)
        reference_grads = gradients(reference)
        # Not one of the model's collectives: one point-to-point message per rank, which nccl
        # carries as well as gloo; each rank posts its receive after its step, so none waits on another.
        for rank in range(1, WORLD_SIZE):
            dist.send(torch.cat([part.reshape(-1).float() for part in compared(expected, reference_grads, rank)]), rank)
        mine = compared(expected, reference_grads, 0)
        del reference, expected, reference_grads
    else:
        shapes = [output.shape for output in outputs] + [grads[name].shape for name in names]
        flat = torch.empty(sum(shape.numel() for shape in shapes), dtype=torch.float32, device=device)
        dist.recv(flat, 0)
        mine = [
            part.view(shape)
            for part, shape in zip(flat.split([shape.numel() for shape in shapes]), shapes, strict=True)
        ]
    expected_outputs, reference_grads = mine[: len(outputs)], dict(zip(names, mine[len(outputs) :], strict=True))
    if ZERO:  # the rank holds the reduced gradients of its part of the flat parameters only
        grads, names = {ZERO_PART: buffer.main}, [ZERO_PART]
        reference_grads = {ZERO_PART: part_of(buffer.regions, reference_grads)}

    output_error = -1.0  # -1: this rank produces no model output
    if outputs:
        output_error = relative_error(torch.cat(outputs), torch.cat(expected_outputs))
    gradient_errors = [relative_error(grads[name], reference_grads[name]) for name in names]
    worst_gradient = max(range(len(gradient_errors)), key=gradient_errors.__getitem__)

    if ZERO:
        # Reporting only, not one of the model's collectives: whether every rank got its weights back.
        restored = torch.tensor([float(gathered_back(stage, buffer))], device=device)
        dist.all_reduce(restored, op=dist.ReduceOp.MIN)
    # Reporting only, not one of the model's collectives: every rank's worst errors, as numbers
    # (gathering Python objects would need numpy); rank 0 names the tensors from the mesh.
    summary = [output_error, gradient_errors[worst_gradient], worst_gradient]
    summaries = [torch.empty(3, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(summaries, torch.tensor(summary, dtype=torch.float64, device=device))
    worst: dict[str, tuple[float, str, int]] = {}
    for rank, (output, gradient, index) in enumerate(found.tolist() for found in summaries):
        if output >= 0:
            worst["output"] = max(worst.get("output", (0.0, "", 0)), (output, "output", rank))
        what = f"gradient of {parameter_names(rank)[int(index)]}"
        if ZERO:
            what = f"gradient of {ZERO_PART}"
        worst["gradient"] = max(worst.get("gradient", (0.0, "", 0)), (gradient, what, rank))
    if tolerance is None:
        tolerance, why = derived_tolerance()
    else:
        why = "--tolerance"
    ok = all(error <= tolerance for error, _, _ in worst.values())
    if ZERO:
        ok = ok and restored.item() == 1
        if groups.rank == 0:
            done = "gave every rank its weights back" if restored.item() == 1 else "changed some rank's weights"
            print(f"check: a ZeRO step at learning rate 0, its AllGather included, {done}")
    if groups.rank == 0:
        for kind, (error, what, rank) in sorted(worst.items()):
            print(f"check: largest {kind} error {error:.3g} ({what} on rank {rank})")
        count = sum(len(parameter_names(rank)) for rank in range(WORLD_SIZE)) + DP * TP
        verdict = "OK" if ok else "MISMATCH"
        counted = f"{count} tensors, world size {WORLD_SIZE}, tolerance {tolerance:.3g} ({why})"
        print(f"check: {verdict}: {counted}", flush=True)
    return ok


ZERO_PART = "the rank's ZeRO part of the flat parameters"


def gathered_back(stage: Stage, buffer: GradientBuffer) -> bool:
    """ZeRO: one optimizer step at learning rate 0, the AllGather of the parts included. It
    changes no weight, so each rank's weights must come back exactly: every part went back where
    it came from."""
    before = {name: param.detach().clone() for name, param in stage.named_parameters()}
    Optimizer(stage, buffer, 0.0).step()
    return all(torch.equal(before[name], param) for name, param in stage.named_parameters())


def stage_weights(groups: Groups, seed: int) -> dict[str, torch.Tensor]:
    """Reference's weights of this rank's stage, drawn from the seed without building the rest."""
    if SCHEDULE == "interleaved":
        full = {
            f"layers.{layer}.{name}": tensor
            for layer in STAGE_LAYERS[groups.stage]
            for name, tensor in reference_layer(layer, seed).state_dict().items()
        }
    else:
        first, last = STAGES[groups.stage]
        full = {
            f"layers.{layer}.{name}": tensor
            for layer in range(first, last + 1)
            for name, tensor in reference_layer(layer, seed).state_dict().items()
        }
    if ENDS:
        full |= reference_ends(seed)
    return full


def train(
    groups: Groups, device: torch.device, steps: int, seed: int, lr: float, tokens: torch.Tensor | None = None
) -> None:
    """`steps` AdamW steps on one fixed batch, or on the next windows of `tokens` (a token file) at
    each step; the first rank of the last stage prints loss and throughput."""
    stage = build_stage(groups, device, stage_weights(groups, seed))
    if HF_CHECKPOINT:
        loaded = load_requested(stage, groups)
    schedule = PipelineSchedule(stage, groups, device)
    buffer = GradientBuffer(stage)
    optimizer = Optimizer(stage, buffer, lr)
    data = rank_data(groups, seed, device)
    reporter = groups.stage == PP - 1 and groups.tp_rank == 0 and groups.dp_rank == 0 and groups.cp_rank == 0
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        if ENDS and tokens is not None:
            data = file_data(tokens, step - 1, groups, device)
        buffer.zero()
        if LOSS_SCALING:
            schedule.loss_scale = optimizer.scaler.scale
        _, losses = train_step(schedule, buffer, groups, data)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if groups.stage == PP - 1:
            loss = torch.stack(losses).sum()
            if SEQUENCE_PARALLEL and not ENDS:
                dist.all_reduce(loss, group=groups.tp)  # reporting only: each rank has its part of the sequence
            if DP * CP > 1:  # reporting only: the mean over replicas, the sum over the parts of the sequence
                dist.all_reduce(loss, group=groups.dp)
                loss /= DP
            if reporter:
                rate = BATCH * SEQ / times[-1]
                message = f"step {step}/{steps}: loss {loss.item():.6f}, {times[-1] * 1e3:.1f} ms, {rate:,.0f} tokens/s"
                if LOSS_SCALING and not optimizer.scaler.finite:
                    message += f", skipped (inf or NaN gradients; loss scale now {optimizer.scaler.scale:g})"
                print(message, flush=True)
    if reporter:
        median = sorted(times)[len(times) // 2]
        print(f"median step {median * 1e3:.1f} ms, {BATCH * SEQ / median:,.0f} tokens/s", flush=True)
        if LOSS_SCALING:
            scaler = optimizer.scaler
            skipped = f"skipped {scaler.skipped} of {steps} steps (inf or NaN gradients)"
            print(f"{skipped}, loss scale {scaler.scale:g}", flush=True)
    if HF_CHECKPOINT:
        save_requested(stage, groups, loaded)
