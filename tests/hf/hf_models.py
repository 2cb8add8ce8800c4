"""The oracle of the Hugging Face tests: tiny random transformers models, how far from them a result
is, and model.py built for one of their checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from small_models import compile_source, write_model

from par.cli import main

# Llama 3.1's RoPE scaling with an original context of 16: of the four frequencies of a head of
# 8, one lies in the smoothed band and three are divided by the factor.
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}


def hf_model(family: str):
    """Two layers of 32 wide, 4 heads (2 KV heads): Llama with Llama 3.1's RoPE scaling, Qwen2 with its
    QKV bias and tied embeddings, GPT-2 with learned positions, biases and a vocabulary of 99."""
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
    return randomized(model)


def randomized(model):
    """Every parameter random (transformers' init leaves biases zero and norm weights one); no dropout."""
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = param.shape[-1] ** -0.5 if param.dim() >= 2 else 0.1  # a matrix, or one per expert
            norm = name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
            param.copy_(torch.randn_like(param) * scale + (1.0 if norm else 0.0))
    return model.eval()  # no dropout (GPT-2's config has 0.1); gradients are computed all the same


def mixtral_model(layers: int, aux_loss_coef: float | None):
    """Mixtral with 4 experts, top 2, each 48 wide; with `aux_loss_coef`, its loss adds that many
    load-balancing losses (output_router_logits)."""
    config = transformers.MixtralConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=100, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2,
        output_router_logits=aux_loss_coef is not None, router_aux_loss_coef=aux_loss_coef or 0.0,
        attn_implementation="sdpa",
    )
    return randomized(transformers.MixtralForCausalLM(config))


def mixtral_checkpoint_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mixtral's tensors (parameters or gradients) under the names of its checkpoints: transformers
    holds each layer's experts fused ([E, 2F, H] gate and up, [E, H, F] down) and its router as
    `mlp.gate`; save_pretrained writes `block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2`
    (down) and `block_sparse_moe.gate`, as the published checkpoints hold them."""
    named = {}
    for name, tensor in tensors.items():
        layer, _, rest = name.partition(".mlp.")
        if rest == "gate.weight":
            named[f"{layer}.block_sparse_moe.gate.weight"] = tensor
        elif rest == "experts.gate_up_proj":
            for e, (gate, up) in enumerate(zip(*tensor.chunk(2, dim=1), strict=True)):
                named[f"{layer}.block_sparse_moe.experts.{e}.w1.weight"] = gate
                named[f"{layer}.block_sparse_moe.experts.{e}.w3.weight"] = up
        elif rest == "experts.down_proj":
            for e, down in enumerate(tensor):
                named[f"{layer}.block_sparse_moe.experts.{e}.w2.weight"] = down
        else:
            named[name] = tensor
    return named


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest difference, relative to the largest magnitude expected."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def build(folder: Path, checkpoint: Path, tp: int, pp: int, dp: int, sp: bool, capsys, cp: int = 1) -> Path:
    """`par new --from-hf` for the layout (and context parallelism, `cp`), then model.py as `par build` writes it."""
    options = ["--tp", tp, "--pp", pp, "--dp", dp, "--microbatches", 2, "--batch", 2 * dp * 2, "--seq", 16]
    code = main(["new", "--from-hf", str(checkpoint / "config.json"), *map(str, options), *(["--sp"] if sp else [])])
    spec = capsys.readouterr().out
    assert code == 0 and spec.startswith("# A ")
    return write_model(compile_source(spec, f"cp={cp}"), folder / "build")
