"""A Mixtral layer of model.py against transformers' `MixtralDecoderLayer` holding the same
weights: an oracle that shares no code with par.

Both the generated layer (tokens sorted by expert, each expert's tokens through its own weights,
the weighted sum put back in place) and Reference's (every expert on every token, weighted
densely) must give transformers' output, input gradient and every parameter's gradient in fp32
within 1e-5, for Mixtral's router (softmax, top 2, renormalised), with the auxiliary
load-balancing loss (`router_aux_loss_coef`) equal to transformers' `load_balancing_loss_func`
and its gradient in every gradient. Together with
tests/torch/test_experts_runtime.py, where the sharded layers at ep 2 and 4, tp 2 and pp 2
equal Reference, this holds the sharded layers to transformers. In one process: no launch.
"""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # imports transformers' Mixtral (about 2 s)

from fork_launch import load_module  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402
from transformers import MixtralConfig  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import (  # noqa: E402
    MixtralDecoderLayer,
    MixtralRotaryEmbedding,
    load_balancing_loss_func,
)

HIDDEN, HEADS, KV_HEADS, FFN, EXPERTS, BATCH, SEQ = 32, 4, 2, 48, 4, 2, 8
TOLERANCE = 1e-5
AUX_LOSS_COEF = 0.5
SPEC = f"""
model mixtral_tiny : mixtral {{
  layers 1  hidden {HIDDEN}  heads {HEADS}  kv_heads {KV_HEADS}  ffn {FFN}  rope_theta 1000000
  experts {EXPERTS}  top_k 2  router_aux_loss_coef {AUX_LOSS_COEF}
  batch {BATCH}  seq {SEQ}  dtype fp32
}}
mesh {{ tp 1 }}
"""


def _transformers_layer() -> torch.nn.Module:
    config = MixtralConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=FFN,
        num_local_experts=EXPERTS,
        num_experts_per_tok=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = MixtralDecoderLayer(config, layer_idx=0)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            noise = torch.randn(parameter.shape)
            parameter.copy_(1 + 0.1 * noise if "norm" in name else noise / parameter.shape[-1] ** 0.5)
    return layer


def _ours(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' weights under par's names; its experts' gate and up are one [E, 2F, H] tensor."""
    gate, up = hf["mlp.experts.gate_up_proj"].chunk(2, dim=1)
    return {
        "ln1.weight": hf["input_layernorm.weight"],
        "qkv.weight": torch.cat([hf[f"self_attn.{p}_proj.weight"] for p in "qkv"]),
        "attn.weight": hf["self_attn.o_proj.weight"],
        "ln2.weight": hf["post_attention_layernorm.weight"],
        "moe_router.weight": hf["mlp.gate.weight"],
        "moe_gate.weight": gate,
        "moe_up.weight": up,
        "moe_down.weight": hf["mlp.experts.down_proj"],
    }


def test_both_mixtral_layers_equal_transformers(tmp_path):
    module = load_module(write_model(compile_source(SPEC), tmp_path), "mixtral_vs_transformers")
    layer = _transformers_layer()
    x = torch.randn(BATCH, SEQ, HIDDEN)
    grad = torch.randn(BATCH, SEQ, HIDDEN)

    hf_x = x.clone().requires_grad_()
    causal = torch.full((SEQ, SEQ), float("-inf")).triu(1)[None, None]
    positions = torch.arange(SEQ)[None].expand(BATCH, SEQ)
    rotary = MixtralRotaryEmbedding(layer.self_attn.config)
    logits = []
    layer.mlp.gate.register_forward_hook(lambda module, inputs, output: logits.append(output[0]))
    expected = layer(hf_x, attention_mask=causal, position_ids=positions, position_embeddings=rotary(hf_x, positions))
    aux_loss = load_balancing_loss_func(tuple(logits), EXPERTS, 2)
    ((expected * grad).sum() + AUX_LOSS_COEF * aux_loss).backward()
    hf_grads = {name: parameter.grad for name, parameter in layer.named_parameters()}
    expected_grads = _ours(hf_grads)

    ours = {
        "sharded": module.MixtralLayer(types.SimpleNamespace(tp_rank=0)),
        "reference": module.ReferenceMixtralLayer(),
    }
    routings = []  # the routing each layer's forward made
    original = module.route

    def recorded(*args, **kwargs):
        routings.append(original(*args, **kwargs))
        return routings[-1]

    for kind, ours_layer in ours.items():
        ours_layer.load_state_dict(_ours({name: p.detach() for name, p in layer.named_parameters()}))
        our_x = x.clone().requires_grad_()
        routings.clear()
        module.route = recorded
        try:  # model.py's stream is sequence-first, [seq, batch, hidden]
            y = ours_layer(our_x.transpose(0, 1).contiguous()).transpose(0, 1)
        finally:
            module.route = original
        assert routings[0].aux_loss.item() == pytest.approx(AUX_LOSS_COEF * aux_loss.item(), rel=TOLERANCE), kind
        y.backward(grad)
        assert (y - expected).abs().max() / expected.abs().max() < TOLERANCE, kind
        assert (our_x.grad - hf_x.grad).abs().max() / hf_x.grad.abs().max() < TOLERANCE, kind
        for name, parameter in ours_layer.named_parameters():
            want = expected_grads[name]
            assert (parameter.grad - want).abs().max() / want.abs().max() < TOLERANCE, (kind, name)
