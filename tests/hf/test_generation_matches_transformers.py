"""Generation with the KV cache, held to transformers' `generate` (an oracle that shares no code
with par): the tiny random Llama (grouped-query attention, Llama 3.1 RoPE scaling) and GPT-2
(learned positions, biases, tied embeddings, a vocabulary padded for tp 2) of
test_model_matches_transformers, their spec written by `par new --from-hf` for a layout, model.py's
generation after random prompts for every sequence of every microbatch (prefill, then decode
steps that read and append the cache), loaded with --load's code: the greedy tokens equal
transformers' and every step's logits are within 1e-5 (fp32). The same launch generates again
with the cache position off by one, which the comparison must reject, and records the trace of
each phase (prefill, decode step), whose collectives are checked here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from fork_launch import launch, load_module  # noqa: E402
from hf_models import build, relative  # noqa: E402

PROBE = Path(__file__).resolve().parent / "generate_probe.py"
TOLERANCE = 1e-5
LENGTH, NEW = 4, 5


def transformers_generate(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy tokens [sequences, NEW] and each step's logits [sequences, vocab] of transformers' generate."""
    config = transformers.GenerationConfig(
        max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        found = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return found.sequences[:, ids.shape[1] :], list(found.logits)


def trace_problems(out: Path, world: int, sp: bool) -> list[str]:
    """What the trace of every rank shows wrong: a send without its receive on the peer (same
    phase, step, microbatch, bytes), a decode step whose collectives differ from the first's
    (static shapes), or, under sequence parallelism, its ReduceScatter in decode or none in the prefill."""
    traces = {rank: json.loads((out / f"trace{rank}.json").read_text()) for rank in range(world)}
    problems = []
    for rank, events in traces.items():
        for event in events:
            if event["op"] == "send":
                meets = [dict(other, op="send", group=[rank], peer=event["peer"]) for other in traces[event["peer"]]
                         if other["op"] == "recv" and other["peer"] == rank]
                if dict(event) not in meets:
                    problems.append(f"rank {rank}: no receive for {event}")
        steps: dict[tuple[int, int], list[tuple]] = {}
        for event in events:
            assert event["phase"] == ("prefill" if event["step"] == 0 else "decode"), event
            if event["op"] not in ("send", "recv"):  # the prefill receives no tokens back
                steps.setdefault((event["step"], event["microbatch"]), []).append((event["op"], event["group"], event["bytes"]))
        decode = [ops for (step, _), ops in sorted(steps.items()) if step > 0]
        if any(ops != decode[0] for ops in decode):
            problems.append(f"rank {rank}: decode steps issue different collectives")
        if sp and any(op == "reducescatter" for ops in decode for op, _, _ in ops):
            problems.append(f"rank {rank}: a decode step runs sequence parallelism's collectives")
        if sp and not any(op == "reducescatter" for (step, _), ops in steps.items() if step == 0 for op, _, _ in ops):
            problems.append(f"rank {rank}: the prefill has no sequence parallelism")
    return problems


LAYOUTS = [
    pytest.param("llama", 2, 2, True, id="llama-tp2-pp2-sp"),
    *(
        pytest.param(family, tp, pp, sp, id=f"{family}-{name}", marks=pytest.mark.slow)
        for family, name, tp, pp, sp in (
            ("llama", "tp1", 1, 1, False),
            ("llama", "tp2", 2, 1, False),
            ("llama", "tp2-pp2", 2, 2, False),
            ("gpt2", "tp2-sp", 2, 1, True),
        )
    ),
]


@pytest.mark.parametrize(("family", "tp", "pp", "sp"), LAYOUTS)
def test_generation_equals_transformers_generate(workdir, checkpoints, capsys, family, tp, pp, sp):  # noqa: F811
    model, checkpoint = checkpoints(family)
    model_py = build(workdir, checkpoint, tp, pp, 1, sp, capsys)
    out = workdir / "out"
    out.mkdir()
    argv = [str(model_py), str(checkpoint), str(out), str(LENGTH), str(NEW)]
    results = launch(PROBE, tp * pp, argv, workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    generated = load_module(model_py, "generated_for_prompts")
    prompts = generated.prompts(None, LENGTH, 0, 0)
    expected_tokens, expected_logits = transformers_generate(model, torch.cat(prompts))

    found = [torch.load(out / f"generated{(pp - 1) * tp + t}.pt") for t in range(tp)]
    assert torch.equal(found[0]["tokens"], expected_tokens)
    sequences = prompts[0].shape[0]
    for kind, limit in (("logits", TOLERANCE), ("mutated", None)):
        errors = []
        for step, expected in enumerate(expected_logits):
            ours = torch.cat([
                torch.cat([part[kind][step, m] for part in found], dim=-1)[:, : generated.VOCAB]
                for m in range(len(prompts))
            ])
            assert ours.shape == expected.shape == (sequences * len(prompts), generated.VOCAB)
            errors.append(relative(ours, expected))
        if limit is not None:
            assert max(errors) <= limit, errors
        else:  # the prefill does not read the cache; every decode step after it reads a misplaced entry
            assert errors[0] <= TOLERANCE and min(errors[1:]) > 1e-3, errors
    assert trace_problems(out, tp * pp, sp and tp > 1) == []
