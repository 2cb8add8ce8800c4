"""Generation (`--generate`, `--prompt-len`): prefill, then decode steps with a KV cache, pipelined."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from par.codegen.pytorch.runtime.checkpoint import load_requested
from par.codegen.pytorch.runtime.collectives import _all_gather
from par.codegen.pytorch.runtime.groups import Groups, global_rank
from par.codegen.pytorch.runtime.model import Reference, Stage
from par.codegen.pytorch.runtime.modes import derived_tolerance, relative_error, stage_weights
from par.codegen.pytorch.runtime.seeds import generator
from par.codegen.pytorch.runtime.sharding import build_stage
from par.codegen.pytorch.runtime.spec import (
    BATCH,
    DP,
    DTYPE,
    HEAD_DIM,
    HF_CHECKPOINT,
    HIDDEN,
    KV_CACHE_HEADS,
    MICROBATCHES,
    PADDED_VOCAB,
    PP,
    SEQUENCE_PARALLEL,
    STAGES,
    TP,
    VOCAB,
    WORLD_SIZE,
)
from par.codegen.pytorch.runtime.trace import _record, set_phase
from par.codegen.pytorch.runtime.vocab import greedy_token

# -- Generation: prefill, then decode steps with a KV cache -------------------------------------
# Every replica serves BATCH // DP sequences in MICROBATCHES microbatches. Step 0 (prefill) runs
# each microbatch's prompts through the stages; each later step (decode) one new position per
# sequence, reading and appending each layer's KV cache. The pipeline runs in slots: stage s
# computes item (step t, microbatch m) in slot t * PERIOD + m + s, PERIOD = max(MICROBATCHES, PP),
# and after every slot each rank posts, in one batched exchange, what it sent in that slot and
# what its neighbours sent it: the activation to the next stage, and from the last stage the
# sampled tokens back to the first, which embeds them PERIOD slots after it embedded the step
# before. A send's receive is always in the peer's exchange of the same slot, so no order of
# blocking sends can deadlock (docs/pytorch.md).

# (op, kind, step, microbatch, peer stage): one message of a slot's exchange
SlotMessage = tuple[str, str, int, int, int]


def period() -> int:
    """Slots between two steps of one microbatch on a stage: MICROBATCHES, or PP when fewer."""
    return max(MICROBATCHES, PP)


def slot_item(stage: int, slot: int, new: int) -> tuple[int, int] | None:
    """The (step, microbatch) `stage` computes in `slot`, or None."""
    step, microbatch = divmod(slot - stage, period())
    if slot < stage or microbatch >= MICROBATCHES or step >= new:
        return None
    return step, microbatch


def slots(new: int) -> int:
    return (new - 1) * period() + MICROBATCHES + PP - 1


def slot_messages(stage: int, slot: int, new: int) -> list[SlotMessage]:
    """What `stage` sends and receives after `slot`: its output, its next input, the tokens fed back."""
    messages: list[SlotMessage] = []
    done, following = slot_item(stage, slot, new), slot_item(stage, slot + 1, new)
    if done is not None and stage < PP - 1:
        messages.append(("send", "activation", *done, stage + 1))
    if following is not None and stage > 0:
        messages.append(("recv", "activation", *following, stage - 1))
    if PP > 1:
        sampled = slot_item(PP - 1, slot, new)  # tokens the last stage sampled in this slot, for the next step
        if sampled is not None and sampled[0] < new - 1 and stage == PP - 1:
            messages.append(("send", "token", *sampled, 0))
        if sampled is not None and sampled[0] < new - 1 and stage == 0:
            messages.append(("recv", "token", *sampled, PP - 1))
    return messages


def decode_plan(stage: int, new: int) -> list[tuple[int, int] | list[SlotMessage]]:
    """The stage's program: each item it computes, then the exchange after its slot (if any)."""
    plan: list[tuple[int, int] | list[SlotMessage]] = []
    for slot in range(slots(new)):
        item = slot_item(stage, slot, new)
        if item is not None:
            plan.append(item)
        messages = slot_messages(stage, slot, new)
        if messages:
            plan.append(messages)
    return plan


def kv_cache(
    groups: Groups, context: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's KV cache, allocated once: per layer of its stage, K and V of
    [BATCH // DP, KV_CACHE_HEADS, context, HEAD_DIM] in `dtype`, microbatch m's sequences in rows
    m * sequences ... (m + 1) * sequences."""
    first, last = STAGES[groups.stage]
    shape = (BATCH // DP, KV_CACHE_HEADS, context, HEAD_DIM)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(first, last + 1)
    ]


def prompts(given: list[int] | None, length: int, dp_rank: int, seed: int) -> list[torch.Tensor]:
    """Each microbatch's prompts, [sequences, length]: the given ids in every sequence, or random
    ids drawn from (seed, "prompt", dp_rank, microbatch)."""
    sequences = BATCH // DP // MICROBATCHES
    if given is not None:
        return [torch.tensor([given] * sequences) for _ in range(MICROBATCHES)]
    return [
        torch.randint(0, VOCAB, (sequences, length), generator=generator(seed, "prompt", dp_rank, m))
        for m in range(MICROBATCHES)
    ]


class Sampling:
    """Greedy (temperature 0), or seeded sampling from softmax(logits / temperature), among the
    top_k largest if given: Gumbel-max, the noise of (seed, replica, step, microbatch) drawn over
    the whole vocabulary on every rank, so that every layout draws the same token."""

    def __init__(self, temperature: float, top_k: int | None, seed: int) -> None:
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def perturbed(self, logits: torch.Tensor, first: int, key: tuple[int, int, int]) -> torch.Tensor:
        """`logits` [sequences, rows] of vocabulary rows first ... first + rows, with the Gumbel noise of `key`."""
        uniform = torch.rand((logits.shape[0], PADDED_VOCAB), generator=generator(self.seed, "sample", *key))
        noise = -torch.log(-torch.log(uniform.clamp(min=1e-20)))[:, first : first + logits.shape[1]]
        return logits.float() / self.temperature + noise.to(logits.device)

    def tokens(self, logits: torch.Tensor, groups: Groups, key: tuple[int, int, int]) -> torch.Tensor:
        """The next token of each sequence, [sequences], from this rank's logits [sequences, PADDED_VOCAB // TP]."""
        if self.temperature == 0:
            return greedy_token(logits, groups)
        logits = logits.float()
        if self.top_k is not None:
            # the k-th largest logit over the vocabulary: each rank's k largest, gathered over tp
            largest = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values
            if TP > 1:
                largest = _all_gather(largest, dim=1, group=groups.tp)  # [sequences, TP x k]
            threshold = largest.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        return greedy_token(self.perturbed(logits, groups.tp_rank * (PADDED_VOCAB // TP), key), groups)


class Generated:
    """What generation gives on a last-stage rank: every sequence's new tokens, [BATCH // DP, new],
    and (when kept) this rank's logits of each step and microbatch, [sequences, PADDED_VOCAB // TP]."""

    def __init__(self, new: int) -> None:
        sequences = BATCH // DP // MICROBATCHES
        self.tokens = torch.zeros((BATCH // DP, new), dtype=torch.long)
        self.logits: dict[tuple[int, int], torch.Tensor] = {}
        self.sequences = sequences
        self.times: dict[tuple[int, int], float] = {}


def _post(messages: list[tuple[str, torch.Tensor, int, str, int, int]]) -> None:
    """Posts every (op, tensor, peer, phase, step, microbatch) at once, then waits for all; the
    trace records each under its phase, step and microbatch (sampled tokens under the step that
    embeds them)."""
    operations = []
    for op, tensor, peer, phase, step, microbatch in messages:
        set_phase(phase, microbatch, step)
        _record(op, tensor, peer=peer)
        operations.append(dist.P2POp(dist.isend if op == "send" else dist.irecv, tensor, peer))
    for work in dist.batch_isend_irecv(operations):
        work.wait()


def stream_shape(step: int, length: int) -> tuple[int, ...]:
    """The activation between stages of one microbatch on one rank, sequence-first: the prompt's
    positions in prefill (this rank's part under sequence parallelism), one position in a decode step."""
    sequences = BATCH // DP // MICROBATCHES
    if step > 0:
        return (1, sequences, HIDDEN)
    if SEQUENCE_PARALLEL:
        return (length // TP, sequences, HIDDEN)
    else:
        return (length, sequences, HIDDEN)


def generate(
    stage: Stage,
    groups: Groups,
    device: torch.device,
    inputs: list[torch.Tensor],
    new: int,
    sampling: Sampling,
    kv_dtype: torch.dtype,
    keep_logits: bool = False,
) -> Generated:
    """`new` tokens after each microbatch's prompts `inputs` (read on the first stage): prefill,
    then `new` - 1 decode steps; the tokens (and logits) on the last stage's ranks."""
    length = inputs[0].shape[1]
    caches = kv_cache(groups, length + new, kv_dtype, device)
    sequences = BATCH // DP // MICROBATCHES
    rows = [slice(m * sequences, (m + 1) * sequences) for m in range(MICROBATCHES)]
    positions = [torch.tensor(0 if t == 0 else length + t - 1, device=device) for t in range(new)]
    first_stage, last_stage = groups.stage == 0, groups.stage == PP - 1
    result = Generated(new)
    received: dict[tuple[int, int], torch.Tensor] = {}  # inputs from the previous stage, by (step, microbatch)
    fed: dict[int, torch.Tensor] = {}  # the first stage's ids of each microbatch's next step
    start = time.perf_counter()
    with torch.no_grad():
        for slot in range(slots(new)):
            item = slot_item(groups.stage, slot, new)
            outgoing: dict[str, torch.Tensor] = {}
            if item is not None:
                step, m = item
                set_phase("prefill" if step == 0 else "decode", m, step)
                if not first_stage:
                    x = received.pop(item)
                elif step == 0:
                    x = inputs[m].to(device)
                else:
                    x = fed.pop(m)
                layer_caches = [(k[rows[m]], v[rows[m]]) for k, v in caches]
                y = stage.serve(x, layer_caches, positions[step], decoding=step > 0)
                if last_stage:
                    token = sampling.tokens(y, groups, (groups.dp_rank, step, m))
                    result.tokens[rows[m], step] = token.cpu()
                    if keep_logits:
                        result.logits[item] = y.float().cpu()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    result.times[item] = time.perf_counter() - start
                    if step < new - 1:
                        if PP > 1:
                            outgoing["token"] = token.view(sequences, 1)
                        else:
                            fed[m] = token.view(sequences, 1)
                else:
                    outgoing["activation"] = y
            posted = []
            for op, kind, step, m, peer_stage in slot_messages(groups.stage, slot, new):
                traced = step + 1 if kind == "token" else step  # tokens: the next step's input (dag.decode)
                phase = "prefill" if traced == 0 else "decode"
                peer = global_rank(groups.dp_rank, peer_stage, groups.tp_rank, groups.cp_rank)
                if op == "send":
                    tensor = outgoing[kind].contiguous()
                elif kind == "activation":
                    tensor = received[step, m] = torch.empty(stream_shape(step, length), dtype=DTYPE, device=device)
                else:
                    tensor = fed[m] = torch.empty((sequences, 1), dtype=torch.long, device=device)
                posted.append((op, tensor, peer, phase, traced, m))
            if posted:
                _post(posted)
    set_phase("step")
    return result


def report(result: Generated, new: int, kv_bytes: int) -> None:
    """Time to first token, per-token latency and throughput, as the first rank of the last stage measured them."""
    first_token = max(result.times[0, m] for m in range(MICROBATCHES))  # every sequence has its first token
    gaps = [result.times[t, 0] - result.times[t - 1, 0] for t in range(1, new)]
    total = max(result.times.values())
    print(f"generated: {' '.join(str(token) for token in result.tokens[0].tolist())}", flush=True)
    latency = f"{sorted(gaps)[len(gaps) // 2] * 1e3:.2f} ms" if gaps else "none (one token)"
    print(
        f"time to first token {first_token * 1e3:.2f} ms, per-token latency (median) {latency}, "
        f"{BATCH * new / total:,.0f} tokens/s ({BATCH} sequences x {new} tokens); "
        f"KV cache {kv_bytes:,} bytes per rank",
        flush=True,
    )


def cache_bytes(groups: Groups, context: int, kv_dtype: torch.dtype) -> int:
    """Bytes of this rank's KV cache: 2 (K and V) x layers of its stage x BATCH // DP x
    KV_CACHE_HEADS x context x HEAD_DIM x bytes per element."""
    first, last = STAGES[groups.stage]
    element = torch.empty((), dtype=kv_dtype).element_size()
    return 2 * (last - first + 1) * (BATCH // DP) * KV_CACHE_HEADS * context * HEAD_DIM * element


def reference_generation(
    reference: Reference, inputs: list[torch.Tensor], new: int, sampling: Sampling, dp_rank: int, forced: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """Reference after the tokens `forced` [BATCH // DP, new] (the sharded model's): its own choice
    at every step [BATCH // DP, new], how far the forced token's score falls below that choice's
    in logits [BATCH // DP, new] (0 where they agree), and its logits per (step, microbatch),
    [sequences, VOCAB]. Every step computes the whole sequence again, no cache. Fed the same
    prefix, each step is compared on its own: one near-tie in low precision does not turn every
    later step into another sequence's."""
    device = next(reference.parameters()).device
    sequences = BATCH // DP // MICROBATCHES
    chosen, margins, logits = torch.zeros_like(forced), torch.zeros(forced.shape), {}
    for m, prompt in enumerate(inputs):
        ids = prompt.to(device)
        rows = slice(m * sequences, (m + 1) * sequences)
        for step in range(new):
            last = reference(ids)[:, -1].float()
            logits[step, m] = last.cpu()
            padded = torch.cat([last, last.new_full((last.shape[0], PADDED_VOCAB - VOCAB), float("-inf"))], dim=-1)
            if sampling.temperature == 0:
                scores, unit = padded, 1.0
            else:
                if sampling.top_k is not None:
                    threshold = padded.topk(sampling.top_k, dim=-1).values[:, -1:]
                    padded = padded.masked_fill(padded < threshold, float("-inf"))
                scores, unit = sampling.perturbed(padded, 0, (dp_rank, step, m)), sampling.temperature
            token = forced[rows, step].to(device)
            best = scores.argmax(dim=-1)
            chosen[rows, step] = best.cpu()
            below = scores.gather(1, best[:, None]) - scores.gather(1, token[:, None])
            margins[rows, step] = (below[:, 0] * unit).cpu()
            ids = torch.cat([ids, token.unsqueeze(-1)], dim=-1)
    return chosen, margins, logits


def check_generation(
    result: Generated,
    groups: Groups,
    device: torch.device,
    given: list[int] | None,
    length: int,
    new: int,
    sampling: Sampling,
    seed: int,
    tolerance: float | None,
) -> bool:
    """Are the tokens those of Reference (but for near-ties), and every step's logits within the
    tolerance of Reference's after the same tokens?

    Rank 0 builds Reference (seed's weights, fp32) and runs each replica's generation again,
    without a cache, fed the tokens generated here; every last-stage rank sends it its tokens and
    logits (reporting only, not one of the model's collectives). The verdict goes to every rank.
    """
    ok = torch.ones((), dtype=torch.float64, device=device)
    items = [(step, m) for step in range(new) for m in range(MICROBATCHES)]
    rows = PADDED_VOCAB // TP
    counted = (BATCH // DP) * new  # the tokens, then the logits of every item
    if groups.stage == PP - 1:
        logits = torch.cat([result.logits[item].flatten() for item in items])
        mine = torch.cat([result.tokens.float().flatten(), logits]).to(device)
        if groups.rank != 0:
            dist.send(mine, 0)
    if groups.rank == 0:
        reference = Reference(seed).float().to(device)
        worst, where = 0.0, ""
        differing: list[tuple[torch.Tensor, torch.Tensor]] = []  # per replica: (token differs, Reference's margin)
        for d in range(DP):
            parts = []
            for t in range(TP):
                sender = global_rank(d, PP - 1, t, 0)
                if sender == 0:
                    part = mine
                else:
                    part = torch.empty(counted + len(items) * result.sequences * rows, device=device)
                    dist.recv(part, sender)
                parts.append(part.cpu())
            ours = parts[0][:counted].view(BATCH // DP, new).long()
            inputs = prompts(given, length, d, seed)
            tokens, margin, expected = reference_generation(reference, inputs, new, sampling, d, ours)
            shards = [part[counted:].view(len(items), result.sequences, rows) for part in parts]
            joined = torch.cat(shards, dim=-1)[..., :VOCAB]  # the vocabulary's shards, padding dropped
            for index, item in enumerate(items):
                error = relative_error(joined[index], expected[item])
                if error > worst:
                    worst, where = error, f"step {item[0]}, microbatch {item[1]}, replica {d}"
            scale = max(logits.abs().max().item() for logits in expected.values())
            differing.append((tokens != ours, margin / scale))
        if tolerance is None:
            tolerance, why = derived_tolerance()
        else:
            why = "--tolerance"
        # A token may differ from Reference's only where Reference's own margin between the two is
        # within what rounding moves two logits: 2 x tolerance of the largest logit (a near-tie).
        ties = sum(int(differ.sum()) for differ, _ in differing)
        same = all(bool((margin[differ] <= 2 * tolerance).all()) for differ, margin in differing)
        passed = same and worst <= tolerance
        ok.fill_(1.0 if passed else 0.0)
        tokens_are = "DIFFER" if not same else f"equal but for {ties} near-ties" if ties else "equal"
        print(f"check generate: tokens {tokens_are}; largest logit error {worst:.3g} ({where})")
        verdict = "OK" if passed else "MISMATCH"
        print(
            f"check generate: {verdict}: {new} steps, world size {WORLD_SIZE}, tolerance {tolerance:.3g} ({why})",
            flush=True,
        )
    dist.broadcast(ok, 0)  # reporting only: the verdict on every rank
    return bool(ok.item())


def serve(
    groups: Groups,
    device: torch.device,
    seed: int,
    given: list[int] | None,
    length: int,
    new: int,
    sampling: Sampling,
    kv_dtype: torch.dtype,
    checking: bool,
    tolerance: float | None,
) -> bool:
    """--generate / --prompt-len: generation on the seed's weights (or a checkpoint's), reported by the
    first rank of the last stage; with --check, held to Reference on the seed's weights."""
    stage = build_stage(groups, device, stage_weights(groups, seed)).eval()
    if HF_CHECKPOINT and not checking:
        load_requested(stage, groups)
    inputs = (
        prompts(given, length, groups.dp_rank, seed) if groups.stage == 0 else [torch.empty((0, length))] * MICROBATCHES
    )
    dist.barrier()  # reporting only: every rank starts together, so the times are the pipeline's
    result = generate(stage, groups, device, inputs, new, sampling, kv_dtype, keep_logits=checking)
    if groups.rank == global_rank(0, PP - 1, 0, 0):
        report(result, new, cache_bytes(groups, length + new, kv_dtype))
    if checking:
        return check_generation(result, groups, device, given, length, new, sampling, seed, tolerance)
    return True
