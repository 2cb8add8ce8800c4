"""The whole path a user takes, held to transformers' own models (an oracle that shares no code
with par): a tiny random LlamaForCausalLM (GQA, Llama 3.1 RoPE scaling), GPT2LMHeadModel
(learned positions, biases, tied embeddings, a vocabulary of 99 padded for tp 2) and
Qwen2ForCausalLM (QKV bias, tied embeddings) saved with `save_pretrained`; `par new --from-hf`
writes the spec for a layout, `par build`'s model.py loads the checkpoint with --load's code,
and one training step on every rank gives the logits, the loss and the gradient of every
parameter (written back in Hugging Face names by --save's code), all within 1e-5 (fp32) of
transformers'. Generation is held to transformers' `generate` in test_generation_matches_transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")
from fork_launch import launch, load_module  # noqa: E402
from hf_models import build, relative  # noqa: E402

PROBE = Path(__file__).resolve().parent / "probe.py"
TOLERANCE = 1e-5


def whole_sequence(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The sequence from each context-parallel rank's part (chunks c and 2·cp − 1 − c), in order."""
    cp = len(parts)
    chunks: list = [None] * (2 * cp)
    for c, part in enumerate(parts):
        chunks[c], chunks[2 * cp - 1 - c] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)


def compare(workdir, model, checkpoint, tp, pp, dp, sp, capsys, cp: int = 1) -> dict[str, float]:
    model_py = build(workdir, checkpoint, tp, pp, dp, sp, capsys, cp)
    out = workdir / "out"
    out.mkdir()
    results = launch(PROBE, tp * cp * pp * dp, [str(model_py), str(checkpoint), str(out)], workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    generated = load_module(model_py, "generated_for_batches")
    ids = torch.cat([generated.make_batch(d, 0)[0] for d in range(dp)])
    model.zero_grad()
    expected = model(ids, labels=ids)  # transformers shifts the labels: token t predicts token t + 1
    expected.loss.backward()
    logits, losses = [], []
    for d in range(dp):
        pieces, replica = [], []
        for c in range(cp):  # each part of the sequence: its logits and its share of the loss
            found = [torch.load(out / f"outputs{((d * pp + pp - 1) * cp + c) * tp + t}.pt") for t in range(tp)]
            microbatches = zip(*(part["outputs"] for part in found), strict=True)
            # the vocabulary's shards, padding dropped, per microbatch in order
            pieces.append([torch.cat(parts, dim=-1)[..., : generated.VOCAB] for parts in microbatches])
            replica.append(torch.stack(found[0]["losses"]).sum())
        logits += [whole_sequence(list(parts), dim=1) for parts in zip(*pieces, strict=True)]
        losses.append(torch.stack(replica).sum())  # the replica's mean
    saved = safetensors_torch.load_file(out / "gradients" / "model.safetensors")
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None and name in saved}
    assert saved.keys() == grads.keys() == set(safetensors_torch.load_file(checkpoint / "model.safetensors"))
    assert torch.cat(logits).shape == expected.logits.shape
    return {
        "logits": relative(torch.cat(logits), expected.logits.detach()),
        "loss": relative(torch.stack(losses).mean(), expected.loss.detach()),
        **{f"gradient of {name}": relative(saved[name], grad) for name, grad in grads.items()},
    }


# Pairs of what a family brings to the ends and a layout, not every family at every layout: GQA
# (llama, qwen2) with tensor parallelism; tied embeddings (gpt2, qwen2) on one stage and across
# stages, where the embedding group sums their gradients, with and without sequence parallelism;
# learned positions (gpt2) on sequence shards at one stage and two; the padded vocabulary (gpt2's
# 99 at tp 2); the ends' unsharded code at tp 1 (llama, untied; gpt2, tied); data parallelism with
# each family. The other pairs (llama at tp 2 alone or x pp 2, qwen2 at tp 1, gpt2 at tp 2 x pp 2 x dp 2,
# ...) take no code path these do not.
SLOW_LAYOUTS = {
    "llama": {"tp1": (1, 1, 1, False), "tp2-pp2-dp2": (2, 2, 2, False)},
    "gpt2": {"tp1": (1, 1, 1, False), "tp2-sp": (2, 1, 1, True), "tp2-pp2": (2, 2, 1, False),
             "tp2-pp2-dp2-sp": (2, 2, 2, True)},
    "qwen2": {"tp2": (2, 1, 1, False), "tp2-pp2-dp2-sp": (2, 2, 2, True)},
}
LAYOUTS = [
    pytest.param("llama", 2, 1, 1, True, id="llama-tp2-sp"),
    *(
        pytest.param(family, *layout, id=f"{family}-{name}", marks=pytest.mark.slow)
        for family, layouts in SLOW_LAYOUTS.items()
        for name, layout in layouts.items()
    ),
]


@pytest.mark.slow  # a launch of its own
def test_context_parallel_logits_loss_and_gradients_equal_transformers(workdir, checkpoints, capsys):
    """Llama (GQA, Llama 3.1 RoPE scaling) at cp 2, ring attention: the sequence in load-balanced
    parts, each rank's positions its own (tp with cp is held to Reference: tests/torch)."""
    model, checkpoint = checkpoints("llama")
    errors = compare(workdir, model, checkpoint, 1, 1, 1, False, capsys, cp=2)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


@pytest.mark.parametrize(("family", "tp", "pp", "dp", "sp"), LAYOUTS)
def test_logits_loss_and_gradients_equal_transformers(workdir, checkpoints, capsys, family, tp, pp, dp, sp):
    model, checkpoint = checkpoints(family)
    errors = compare(workdir, model, checkpoint, tp, pp, dp, sp, capsys)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])
