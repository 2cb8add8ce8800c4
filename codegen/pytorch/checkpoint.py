"""Where each parameter of model.py lives in a Hugging Face checkpoint: the table model.py's
`--load` and `--save` read (`CHECKPOINT`, `TRANSPOSED`), written per spec from `LAYOUTS`.

A parameter is the concatenation along its rows of one or more checkpoint tensors (Llama's
q_proj, k_proj and v_proj make the fused qkv, in [Q heads | K heads | V heads] order); GPT-2's
Conv1D weights are stored [in, out], the transpose of ours. `{i}` is the layer index, the same
in both names; `{e}`, an expert's index in the whole model, names one checkpoint tensor per expert,
stacked along the first dim of the experts' weight (Mixtral's `block_sparse_moe.experts.{e}.w1`,
as transformers' `save_pretrained` writes it and the published checkpoints hold it). docs/pytorch.md prints this table (a test holds the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    """The Hugging Face tensors one parameter is made of."""

    names: tuple[str, ...]  # concatenated along the parameter's rows
    transposed: bool = False  # stored [in, out] (GPT-2's Conv1D)


def _llama_attention(part: str) -> Source:
    return Source(tuple(f"model.layers.{{i}}.self_attn.{proj}_proj.{part}" for proj in "qkv"))


_LLAMA = {
    "embed.weight": Source(("model.embed_tokens.weight",)),
    "layers.{i}.ln1.weight": Source(("model.layers.{i}.input_layernorm.weight",)),
    "layers.{i}.qkv.weight": _llama_attention("weight"),
    "layers.{i}.qkv.bias": _llama_attention("bias"),  # qwen2
    "layers.{i}.attn.weight": Source(("model.layers.{i}.self_attn.o_proj.weight",)),
    "layers.{i}.ln2.weight": Source(("model.layers.{i}.post_attention_layernorm.weight",)),
    "layers.{i}.gate.weight": Source(("model.layers.{i}.mlp.gate_proj.weight",)),
    "layers.{i}.up.weight": Source(("model.layers.{i}.mlp.up_proj.weight",)),
    "layers.{i}.mlp.weight": Source(("model.layers.{i}.mlp.down_proj.weight",)),
    "final_norm.weight": Source(("model.norm.weight",)),
    "head.weight": Source(("lm_head.weight",)),
}


def _mixtral_experts(weight: str) -> Source:
    return Source((f"model.layers.{{i}}.block_sparse_moe.experts.{{e}}.{weight}.weight",))


# Mixtral: Llama's attention and ends; the router is `gate`, each expert's gate, down and up
# projections w1, w2 and w3.
_MIXTRAL = {name: source for name, source in _LLAMA.items() if name.split(".")[-2] not in ("gate", "up", "mlp")} | {
    "layers.{i}.moe_router.weight": Source(("model.layers.{i}.block_sparse_moe.gate.weight",)),
    "layers.{i}.moe_gate.weight": _mixtral_experts("w1"),
    "layers.{i}.moe_up.weight": _mixtral_experts("w3"),
    "layers.{i}.moe_down.weight": _mixtral_experts("w2"),
}


def _gpt2(ours: str, theirs: str, *, conv1d: bool = False) -> dict[str, Source]:
    """A GPT-2 module's weight and bias; a Conv1D's weight is stored transposed."""
    return {
        f"{ours}.weight": Source((f"{theirs}.weight",), transposed=conv1d),
        f"{ours}.bias": Source((f"{theirs}.bias",)),
    }


_GPT2 = {
    "embed.weight": Source(("transformer.wte.weight",)),
    "pos_embed.weight": Source(("transformer.wpe.weight",)),
    **_gpt2("layers.{i}.ln1", "transformer.h.{i}.ln_1"),
    **_gpt2("layers.{i}.qkv", "transformer.h.{i}.attn.c_attn", conv1d=True),
    **_gpt2("layers.{i}.attn", "transformer.h.{i}.attn.c_proj", conv1d=True),
    **_gpt2("layers.{i}.ln2", "transformer.h.{i}.ln_2"),
    **_gpt2("layers.{i}.fc1", "transformer.h.{i}.mlp.c_fc", conv1d=True),
    **_gpt2("layers.{i}.mlp", "transformer.h.{i}.mlp.c_proj", conv1d=True),
    **_gpt2("final_norm", "transformer.ln_f"),
    "head.weight": Source(("lm_head.weight",)),
}

# Per built-in block: its parameters' checkpoint tensors. A spec whose block is not here, or
# has a parameter its layout does not name, has no --load or --save.
LAYOUTS: dict[str, dict[str, Source]] = {"llama": _LLAMA, "qwen2": _LLAMA, "mixtral": _MIXTRAL, "gpt2": _GPT2}


@dataclass(frozen=True, slots=True)
class CheckpointTable:
    """The Hugging Face names of a block's parameters, as model.py's --load and --save read them."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]  # (parameter pattern, checkpoint tensors)
    transposed: tuple[str, ...]  # parameter patterns stored [in, out]

    @property
    def experts(self) -> bool:
        """Some parameter stacks one checkpoint tensor per expert (`{e}`)."""
        return any("{e}" in source for _, sources in self.entries for source in sources)


def checkpoint_table(block: str, parameters: Iterable[str]) -> CheckpointTable | None:
    """The table for a model of `block` with these parameter patterns (`layers.{i}.qkv.weight`,
    `embed.weight`), in their order; None when the block's layout does not name every one."""
    layout = LAYOUTS.get(block)
    names = list(parameters)
    if layout is None or any(name not in layout for name in names):
        return None
    return CheckpointTable(
        tuple((name, layout[name].names) for name in names),
        tuple(name for name in names if layout[name].transposed),
    )
