"""The generated layer stack against transformers' own decoder layers (an oracle that shares no
code with par): a tiny random Llama (grouped-query attention, RoPE with Llama 3.1's scaling),
Qwen2 (QKV bias) and GPT-2 (biases, Conv1D weights stored transposed), their layers' weights
loaded with model.py --load's code, one training step on every rank of the layout; outputs and the
gradient of every parameter within 1e-5 (fp32). Mutants of model.py (GQA heads repeated, not
interleaved; rope left out; rope on V too; the row-parallel bias added on every rank; the QKV bias
left out) fail the same comparison.

A spec without `vocab` is the layer stack alone: its input is the residual stream, its loss the
mean squared error against a target (model.py draws both from its seed; the test takes them from
model.py's own `make_batch`, and the gradients, written in Hugging Face names by rank 0, are
compared with transformers' by name).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402
from fork_launch import launch, load_module  # noqa: E402
from hf_models import hf_model, relative  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402

PROBE = Path(__file__).resolve().parent / "probe.py"
TOLERANCE = 1e-5
SIZES = "layers 2  hidden 32  heads 4  kv_heads 2  ffn 48  batch 4  seq 8  dtype fp32  norm_eps 1e-6"
ROPE_SETTINGS = "rope_scaling llama3  rope_factor 8  rope_low_freq_factor 1  rope_high_freq_factor 4  rope_original_max_positions 16"


def spec(block: str, tp: int, pp: int, dp: int, sp: bool) -> str:
    mesh = f"tp {tp}  pp {pp}  dp {dp}  microbatches 2" + ("  sp" if sp else "")
    if block == "gpt2":
        model = "layers 2  hidden 32  heads 4  batch 4  seq 8  dtype fp32"
    else:
        model = f"{SIZES}  rope_theta 10000  {ROPE_SETTINGS if block == 'llama' else ''}"
    return f"model stack : {block} {{ {model} }}\nmesh {{ {mesh} }}\n"


def layer_checkpoint(model, folder) -> None:
    folder.mkdir()
    layers = {name: t.contiguous() for name, t in model.state_dict().items() if name.startswith(LAYERS_PREFIX)}
    safetensors_torch.save_file(layers, folder / "model.safetensors")


LAYERS_PREFIX = ("model.layers.", "transformer.h.")


def transformers_step(model, inputs, targets):
    """transformers' decoder layers on the residual stream, and the gradients of the mean squared error."""
    model.zero_grad()
    hidden = inputs
    if isinstance(model, transformers.GPT2LMHeadModel):
        for layer in model.transformer.h:
            hidden = layer(hidden)
    else:
        positions = torch.arange(inputs.shape[1])[None].expand(inputs.shape[0], -1)
        rotary = model.model.rotary_emb(inputs, positions)
        for layer in model.model.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    F.mse_loss(hidden, targets).backward()
    return hidden.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def run_layout(folder, block: str, tp: int, pp: int, dp: int, sp: bool, mutation=()) -> tuple[float, float]:
    """The largest relative errors of the outputs and of any gradient, against transformers;
    `mutation`: (old, new) pairs of text replaced in model.py first, each found."""
    model_py = write_model(compile_source(spec(block, tp, pp, dp, sp)), folder / "build")
    text = model_py.read_text()
    for old, new in mutation:
        assert old in text, old
        text = text.replace(old, new)
    model_py.write_text(text)
    model = hf_model(block)
    layer_checkpoint(model, folder / "checkpoint")
    out = folder / "out"
    out.mkdir()
    results = launch(PROBE, tp * pp * dp,
                     [str(model_py), str(folder / "checkpoint"), str(out)], folder / "logs", timeout=240)
    assert all(result.exitcode == 0 for result in results), [result.stderr for result in results]
    generated = load_module(model_py, "generated_for_batches")
    batches = [generated.make_batch(d, 0) for d in range(dp)]
    inputs, targets = (torch.cat(parts) for parts in zip(*batches, strict=True))
    expected, grads = transformers_step(model, inputs, targets)
    replicas = []
    for d in range(dp):
        ranks = [(d * pp + pp - 1) * tp + t for t in range(tp)]
        outputs = [torch.load(out / f"outputs{rank}.pt")["outputs"] for rank in ranks]
        # the stage outputs are sequence-first, [seq, batch, hidden]
        microbatches = [(torch.cat(parts) if sp else parts[0]).transpose(0, 1) for parts in zip(*outputs, strict=True)]
        replicas.append(torch.cat(microbatches))
    output_error = relative(torch.cat(replicas), expected)
    saved = safetensors_torch.load_file(out / "gradients" / "model.safetensors")
    assert saved.keys() == {name for name in grads if name.startswith(LAYERS_PREFIX)}
    gradient_error = max(relative(saved[name], grads[name]) for name in saved)
    return output_error, gradient_error


# The layouts of the whole model are in test_model_matches_transformers.py. Here each block once
# with tensor parallelism, where its weights are split by head (GQA's KV heads, Qwen2's QKV bias,
# GPT-2's transposed Conv1D and its row-parallel bias added once) and with sequence parallelism,
# where its norm (RMSNorm, or LayerNorm with a bias) runs on sequence shards; pipeline and data
# parallelism once; one rank, where the mutations run, once. The other pairs of block and layout
# take no code path these do not.
LAYOUTS = [
    pytest.param("llama", 1, 1, 1, False, id="llama-tp1"),
    pytest.param("llama", 2, 1, 1, True, id="llama-tp2-sp", marks=pytest.mark.slow),
    pytest.param("qwen2", 2, 1, 1, True, id="qwen2-tp2-sp", marks=pytest.mark.slow),
    pytest.param("gpt2", 2, 1, 1, True, id="gpt2-tp2-sp", marks=pytest.mark.slow),
    pytest.param("gpt2", 2, 2, 2, False, id="gpt2-tp2-pp2-dp2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("block", "tp", "pp", "dp", "sp"), LAYOUTS)
def test_layers_equal_transformers(workdir, block, tp, pp, dp, sp):
    output_error, gradient_error = run_layout(workdir, block, tp, pp, dp, sp)
    assert output_error <= TOLERANCE and gradient_error <= TOLERANCE, (output_error, gradient_error)


# name -> (block, tp, the text replaced in model.py)
MUTATIONS = {
    # the mutation: K and V heads repeated, not interleaved, for the query heads; tp 1:
    # all four query heads and both KV heads on one rank, where repeat and interleave differ
    "repeat-not-interleave": ("llama", 1, [(
        "k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)",
        "k.repeat(1, heads // kv_heads, 1, 1), v.repeat(1, heads // kv_heads, 1, 1)",
    )]),
    "no-rope": ("llama", 1, [(
        "    turned = qk * cos - half_turned * sin if back else qk * cos + half_turned * sin", "    turned = qk",
    )]),
    # V turned as well as Q and K
    "rope-on-v": ("llama", 1, [
        ("split([q_size + kv_size, kv_size], dim=-1)", "split([q_size + 2 * kv_size, 0], dim=-1)"),
        ("(q_size + kv_size) // HEAD_DIM, HEAD_DIM)", "(q_size + 2 * kv_size) // HEAD_DIM, HEAD_DIM)"),
    ]),
    # every rank adds the row-parallel bias to its partial sum: the sum holds it tp times
    "row-bias-on-every-rank": ("gpt2", 2, [("adds_bias=groups.tp_rank == 0", "adds_bias=True")]),
    # the column-parallel QKV bias left out
    "no-qkv-bias": ("qwen2", 2, [("return F.linear(x, self.weight, self.bias)", "return F.linear(x, self.weight)")]),
}


@pytest.mark.parametrize(
    "name", [name if name in ("repeat-not-interleave", "no-rope") else pytest.param(name, marks=pytest.mark.slow)
             for name in MUTATIONS]
)
def test_a_mutated_model_py_fails_the_comparison(workdir, name):
    block, tp, mutation = MUTATIONS[name]
    output_error, _ = run_layout(workdir, block, tp, 1, 1, False, mutation)
    assert output_error > 100 * TOLERANCE
