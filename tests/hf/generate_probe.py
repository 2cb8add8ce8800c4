"""Run on every rank by the generation oracle test (through fork_launch, as a model.py would be):
loads a generated model.py as a module, fills its stage from a Hugging Face checkpoint with
model.py's own --load, and generates greedily with its KV cache after random prompts of
`length` ids (model.py's own, from seed 0), with the collective trace on. It writes, on the last
stage's ranks, the tokens and each step's logits of this rank; every rank writes its trace.

It then generates again with the decode steps' cache position off by one (the position each
step writes and attends up to, and rope's angle, one too far): the test holds that run's
logits to be wrong, so a comparison that cannot see a misplaced cache entry cannot pass.

    main([model_py, checkpoint, out, length, new])
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist
from fork_launch import load_module


def main(argv: list[str]) -> int:
    model_py, checkpoint, out, length, new = argv
    m = load_module(Path(model_py), "model_under_test")
    timeout = datetime.timedelta(seconds=120)
    device = m.init_distributed(timeout)
    groups = m.Groups(dist.get_rank(), timeout)
    stage = m.Stage(groups).to(device=device, dtype=m.DTYPE).eval()
    m.load_checkpoint(checkpoint, stage, groups)
    inputs = m.prompts(None, int(length), groups.dp_rank, 0)
    greedy = m.Sampling(0.0, None, 0)
    trace = m.start_trace()
    result = m.generate(stage, groups, device, inputs, int(new), greedy, m.DTYPE, keep_logits=True)
    Path(f"{out}/trace{groups.rank}.json").write_text(json.dumps(trace.events))
    m.TRACE = None

    cache = m.KVCache

    def shifted(k, v, position, decoding):
        return cache(k, v, position + 1 if decoding else position, decoding)

    m.KVCache = shifted  # Stage.serve builds each layer's cache by this name
    mutated = m.generate(stage, groups, device, inputs, int(new), greedy, m.DTYPE, keep_logits=True)
    if groups.stage == m.PP - 1:
        saved = {"tokens": result.tokens, "logits": result.logits, "mutated": mutated.logits}
        torch.save(saved, f"{out}/generated{groups.rank}.pt")
    dist.destroy_process_group()
    return 0
