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
from small_models import compile_source, write_model  # noqa: E402

from par.cli import main  # noqa: E402

PROBE = Path(__file__).resolve().parent / "probe.py"
TOLERANCE = 1e-5
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}


def hf_model(family: str):
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                  vocab_size=100, rms_norm_eps=1e-6, max_position_embeddings=64, attn_implementation="sdpa")
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=10000.0, rope_scaling=ROPE))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_theta=10000.0, tie_word_embeddings=True))
    else:
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=32,
                                         bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
        model = transformers.GPT2LMHeadModel(config)
    torch.manual_seed(2)
    with torch.no_grad():  # every parameter random, biases and norm weights included
        for name, param in model.named_parameters():
            scale = param.shape[-1] ** -0.5 if param.dim() == 2 else 0.1
            norm = name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
            param.copy_(torch.randn_like(param) * scale + (1.0 if norm else 0.0))
    return model.eval()  # no dropout; gradients are computed all the same


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (its transformers model, the folder save_pretrained wrote): one of each per module."""
    made = {}

    def get(family: str):
        if family not in made:
            folder = tmp_path_factory.mktemp(family)
            model = hf_model(family)
            model.save_pretrained(folder)
            made[family] = (model, folder)
        return made[family]

    return get


def build(folder: Path, checkpoint: Path, tp: int, pp: int, dp: int, sp: bool, capsys) -> Path:
    """`par new --from-hf` for the layout, then model.py as `par build` writes it."""
    options = ["--tp", tp, "--pp", pp, "--dp", dp, "--microbatches", 2, "--batch", 2 * dp * 2, "--seq", 16]
    code = main(["new", "--from-hf", str(checkpoint / "config.json"), *map(str, options), *(["--sp"] if sp else [])])
    spec = capsys.readouterr().out
    assert code == 0 and spec.startswith("# A ")
    return write_model(compile_source(spec), folder / "build")


def relative(actual, expected) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def compare(workdir, model, checkpoint, tp, pp, dp, sp, capsys) -> dict[str, float]:
    model_py = build(workdir, checkpoint, tp, pp, dp, sp, capsys)
    out = workdir / "out"
    out.mkdir()
    results = launch(PROBE, tp * pp * dp, [str(model_py), str(checkpoint), str(out)], workdir / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    generated = load_module(model_py, "generated_for_batches")
    ids = torch.cat([generated.make_batch(d, 0)[0] for d in range(dp)])
    model.zero_grad()
    expected = model(ids, labels=ids)  # transformers shifts the labels: token t predicts token t + 1
    expected.loss.backward()
    logits, losses = [], []
    for d in range(dp):
        found = [torch.load(out / f"outputs{(d * pp + pp - 1) * tp + t}.pt") for t in range(tp)]
        for parts in zip(*(part["outputs"] for part in found), strict=True):  # microbatches, in order
            logits.append(torch.cat(parts, dim=-1)[..., : generated.VOCAB])  # the vocabulary's shards, padding dropped
        losses.append(torch.stack(found[0]["losses"]).sum())  # the replica's mean
    saved = safetensors_torch.load_file(out / "gradients" / "model.safetensors")
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None and name in saved}
    assert saved.keys() == grads.keys() == set(safetensors_torch.load_file(checkpoint / "model.safetensors"))
    assert torch.cat(logits).shape == expected.logits.shape
    return {
        "logits": relative(torch.cat(logits), expected.logits.detach()),
        "loss": relative(torch.stack(losses).mean(), expected.loss.detach()),
        **{f"gradient of {name}": relative(saved[name], grad) for name, grad in grads.items()},
    }


LAYOUTS = [
    pytest.param("llama", 2, 1, 1, True, id="llama-tp2-sp"),
    pytest.param("gpt2", 2, 2, 1, False, id="gpt2-tp2-pp2", marks=pytest.mark.slow),
    *(
        pytest.param(family, *layout, id=f"{family}-{name}", marks=pytest.mark.slow)
        for family in ("llama", "gpt2", "qwen2")
        for name, layout in (
            ("tp1", (1, 1, 1, False)),
            ("tp2", (2, 1, 1, False)),
            ("tp2-sp", (2, 1, 1, True)),
            ("tp2-pp2", (2, 2, 1, False)),
            ("tp2-pp2-dp2", (2, 2, 2, False)),
            ("tp2-pp2-dp2-sp", (2, 2, 2, True)),
        )
        if f"{family}-{name}" not in ("llama-tp2-sp", "gpt2-tp2-pp2")
    ),
]


@pytest.mark.parametrize(("family", "tp", "pp", "dp", "sp"), LAYOUTS)
def test_logits_loss_and_gradients_equal_transformers(workdir, checkpoints, capsys, family, tp, pp, dp, sp):
    model, checkpoint = checkpoints(family)
    errors = compare(workdir, model, checkpoint, tp, pp, dp, sp, capsys)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])
