"""The vocabulary-parallel embedding and cross-entropy of model.py against torch's own, on 3 gloo ranks.

The oracle is torch's unsharded `F.embedding` and `F.cross_entropy`, which share no code with
model.py's: each rank holds its rows of a 10-token vocabulary padded to 12 (the padding rows'
logits are set to win, were they not masked), looks up and scores its part, and the forward
results and the gradients of its shard must equal the oracle's. Mutants of model.py (the MAX
AllReduce dropped, the lookup's mask dropped, the padding left unmasked) fail the same test.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fork_launch import launch, load_module  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

SPEC = """
model m : gpt { layers 1  hidden 24  heads 3  ffn 48  batch 2  seq 6  vocab 10  dtype fp32 }
mesh { tp 3 }
"""
WORLD = 3
MUTANTS = {
    "no MAX AllReduce": ("_all_reduce(largest, group, op=dist.ReduceOp.MAX)", "pass"),
    "no mask in the lookup": (".masked_fill_(elsewhere.unsqueeze(-1), 0)", ""),
    # the loss's (greedy decoding masks the padding too, one indent less)
    "padding not masked": ('\n        logits = logits.index_fill(-1, padding_rows(first, logits), float("-inf"))', ""),
}


def _errors(path: str, sp: bool) -> dict[str, float]:
    """This rank's largest differences from the oracle."""
    dist.init_process_group("gloo")  # the rank and its peers from the environment the launch gives
    rank = dist.get_rank()
    module = load_module(path, f"vocab_parallel_{rank}")
    groups = module.Groups(rank, datetime.timedelta(seconds=60))
    vocab, padded, hidden, seq = module.VOCAB, module.PADDED_VOCAB, module.HIDDEN, module.SEQ
    rows = padded // WORLD
    mine = slice(rank * rows, (rank + 1) * rows)
    random = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (2, seq), generator=random)
    weight = torch.randn(vocab, hidden, generator=random, requires_grad=True)
    upstream = torch.randn(2, seq, hidden, generator=random)
    logits = torch.randn(2, seq, vocab, generator=random, requires_grad=True)
    weights = torch.rand(2, seq, generator=random)  # a loss of per-token losses, each weighted
    found: dict[str, float] = {}

    # The embedding: this rank's output (its part of the sequence under sequence parallelism).
    F.embedding(ids, weight).mul(upstream).sum().backward()
    expected = F.embedding(ids, weight).detach()
    part = slice(rank * seq // WORLD, (rank + 1) * seq // WORLD) if sp else slice(None)
    embed = module.VocabParallelEmbedding(groups)
    with torch.no_grad():
        embed.weight.copy_(module.shard_parameter(weight.detach(), "rows of the vocabulary", rank))
    out = embed(ids).transpose(0, 1)  # the stream is sequence-first
    out.mul(upstream[:, part]).sum().backward()
    found["embedding"] = (out - expected[:, part]).abs().max().item()
    full_grad = torch.cat([weight.grad, torch.zeros(padded - vocab, hidden)])
    found["embedding gradient"] = (embed.weight.grad - full_grad[mine]).abs().max().item()

    # The cross-entropy: targets are the next tokens (the last position has none).
    targets = module.next_tokens(ids)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
    expected.view(2, seq).mul(weights).sum().backward()
    wide = torch.cat([logits.detach(), torch.full((2, seq, padded - vocab), 100.0)], dim=-1)  # padding would win
    local = wide[..., mine].clone().requires_grad_()
    losses = module.vocab_parallel_cross_entropy(local, targets, groups)
    losses.mul(weights).sum().backward()
    found["loss"] = (losses - expected.view(2, seq)).abs().max().item()
    grad = torch.cat([logits.grad, torch.zeros(2, seq, padded - vocab)], dim=-1)
    found["loss gradient"] = (local.grad - grad[..., mine]).abs().max().item()
    dist.destroy_process_group()
    return found


def _rank(argv: list[str]) -> int:
    """One rank, as fork_launch runs it: [model.py, "sp" or "", folder] -> folder/rank<r>.json, its differences."""
    path, sp, folder = argv
    found = _errors(path, sp == "sp")
    (Path(folder) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(found))
    return 0


def _run(path, folder, sp: bool) -> dict[str, float]:
    """The largest difference of each kind over the ranks."""
    results = launch(_rank, WORLD, [str(path), "sp" if sp else "", str(folder)], folder / "logs")
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    ranks = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    return {kind: max(found[kind] for found in ranks) for kind in ranks[0]}


@pytest.mark.parametrize("sp", [False, True], ids=["replicated", "sequence parallel"])
def test_vocab_parallel_embedding_and_cross_entropy_equal_torchs(sp, workdir):
    path = write_model(compile_source(SPEC, f"sp={'on' if sp else 'off'}"), workdir)
    errors = _run(path, workdir, sp)
    assert all(error < 1e-5 for error in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS)
def test_a_mutant_of_the_vocabulary_parallel_code_fails(mutant, workdir):
    path = write_model(compile_source(SPEC), workdir)
    text = path.read_text()
    old, new = MUTANTS[mutant]
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    errors = _run(path, workdir, sp=False)
    assert max(errors.values()) > 1e-2, errors
