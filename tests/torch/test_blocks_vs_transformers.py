"""One layer of each built-in block with real-model features (gpt2's biases, llama's rope with
Llama 3.1 scaling, qwen2's QKV bias and norm epsilon), sharded as model.py runs it on gloo, against
transformers' own decoder layer holding the same weights: an oracle that shares no code with par.

Each rank builds its shard from the transformers layer's weights (renamed to par's modules, the
fused QKV rows in [Q heads | K heads | V heads] order), runs the forward on its part of the input
and backward with its part of the output gradient; the parts, put together, must equal
transformers' output and input gradient in fp32 within 1e-5. A mutated model.py (rope left out,
rope on V too, the QKV bias left out, the row-parallel bias added on every rank) fails the same comparison.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # launches model.py on several processes

from fork_launch import launch  # noqa: E402
from small_models import compile_source, write_model  # noqa: E402
from transformers import GPT2Config, LlamaConfig, Qwen2Config  # noqa: E402
from transformers.models.gpt2.modeling_gpt2 import GPT2Block  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding  # noqa: E402

HIDDEN, HEADS, FFN, BATCH, SEQ = 64, 4, 128, 2, 8
TOLERANCE = 1e-5
LLAMA3 = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
}
FAMILIES = {
    "gpt2": {
        "settings": "kv_heads 4",
        "config": GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_inner=FFN, n_positions=SEQ, layer_norm_epsilon=1e-5),
    },
    "llama": {
        "settings": (
            "kv_heads 2  rope_theta 500000  rope_scaling llama3  rope_factor 8  rope_low_freq_factor 1  "
            "rope_high_freq_factor 4  rope_original_max_positions 32"
        ),
        "config": LlamaConfig(
            hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=FFN,
            rms_norm_eps=1e-5, max_position_embeddings=128, rope_parameters=dict(LLAMA3),
        ),
    },
    "qwen2": {
        "settings": "kv_heads 2  norm_eps 1e-6  rope_theta 1000000",
        "config": Qwen2Config(
            hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=FFN,
            rms_norm_eps=1e-6, max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
    },
}
LAYOUTS = {"tp1": (1, False), "tp2": (2, False), "tp2 sp": (2, True)}

# Each rank: its shard of the weights, the forward on its part of the input, the backward of its
# part of the output gradient; what it computes is saved for the test to put together.
DRIVER = textwrap.dedent(
    """
    import datetime
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from fork_launch import load_module


    def main(argv):
        folder = Path(argv[0])
        model = load_module(folder / "model.py", "model_under_test")
        device = model.init_distributed(datetime.timedelta(seconds=60))
        groups = model.Groups(dist.get_rank(), datetime.timedelta(seconds=60))
        data = torch.load(folder / "data.pt")
        stage = model.build_stage(groups, device, data["weights"])
        x = model.rank_part(data["input"], groups.tp_rank, device).requires_grad_()
        y = stage(x)
        y.backward(model.rank_part(data["grad"], groups.tp_rank, device))
        torch.save({"output": y.detach(), "input_grad": x.grad}, folder / f"rank{groups.rank}.pt")
        dist.destroy_process_group()
        return 0
    """
)


def _layer(family: str) -> torch.nn.Module:
    """transformers' layer, every parameter random (its init leaves biases zero and norms one)."""
    config = FAMILIES[family]["config"]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = {"gpt2": GPT2Block, "llama": LlamaDecoderLayer, "qwen2": Qwen2DecoderLayer}[family](config, layer_idx=0)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            noise = torch.randn(parameter.shape)
            scale = name.endswith("weight") and ("norm" in name or name.startswith("ln_"))
            parameter.copy_(1 + 0.1 * noise if scale else 0.1 * noise)
    return layer.eval()


def _par_weights(family: str, layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The layer's weights under par's module names (layers.0.<step>), QKV fused."""
    hf = {name: tensor.detach().clone() for name, tensor in layer.state_dict().items()}
    if family == "gpt2":  # Conv1D holds [in, out]
        names = {"ln1": "ln_1", "qkv": "attn.c_attn", "attn": "attn.c_proj", "ln2": "ln_2", "fc1": "mlp.c_fc", "mlp": "mlp.c_proj"}
        ours = {}
        for step, theirs in names.items():
            weight = hf[f"{theirs}.weight"]
            ours[f"{step}.weight"] = weight if step.startswith("ln") else weight.t().contiguous()
            ours[f"{step}.bias"] = hf[f"{theirs}.bias"]
    else:
        attention = "self_attn"
        ours = {
            "ln1.weight": hf["input_layernorm.weight"],
            "qkv.weight": torch.cat([hf[f"{attention}.{p}_proj.weight"] for p in "qkv"]),
            "attn.weight": hf[f"{attention}.o_proj.weight"],
            "ln2.weight": hf["post_attention_layernorm.weight"],
            "gate.weight": hf["mlp.gate_proj.weight"],
            "up.weight": hf["mlp.up_proj.weight"],
            "mlp.weight": hf["mlp.down_proj.weight"],
        }
        if family == "qwen2":
            ours["qkv.bias"] = torch.cat([hf[f"{attention}.{p}_proj.bias"] for p in "qkv"])
    return {f"layers.0.{name}": tensor for name, tensor in ours.items()}


def _transformers(family: str, layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.clone().requires_grad_()
    causal = torch.full((SEQ, SEQ), float("-inf")).triu(1)[None, None]
    if family == "gpt2":
        y = layer(x, attention_mask=causal)
    else:
        rotary = (LlamaRotaryEmbedding if family == "llama" else Qwen2RotaryEmbedding)(layer.self_attn.config)
        positions = torch.arange(SEQ)[None].expand(BATCH, SEQ)
        y = layer(x, attention_mask=causal, position_ids=positions, position_embeddings=rotary(x, positions))
    y.backward(grad)
    return y.detach(), x.grad


def _spec(family: str, tp: int, sp: bool) -> str:
    settings = FAMILIES[family]["settings"]
    return (
        f"model m : {family} {{ layers 1  hidden {HIDDEN}  heads {HEADS}  {settings}  ffn {FFN}  "
        f"batch {BATCH}  seq {SEQ}  dtype fp32 }}\nmesh {{ tp {tp}{'  sp' if sp else ''} }}\n"
    )


def _sharded(family: str, tp: int, sp: bool, folder: Path, data: dict, mutate=None):
    """The output and input gradient of the layer as the tp ranks compute them, put together."""
    text = Path(write_model(compile_source(_spec(family, tp, sp)), folder)).read_text()
    if mutate is not None:
        mutated = mutate(text)
        assert mutated != text, "the mutation did not apply"
        (folder / "model.py").write_text(mutated)
    torch.save(data, folder / "data.pt")
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    results = launch(driver, tp, [str(folder)], folder / "logs")
    assert all(r.exitcode == 0 for r in results), "\n".join(r.stdout + r.stderr for r in results)
    parts = [torch.load(folder / f"rank{rank}.pt") for rank in range(tp)]
    # model.py's stream is sequence-first, [seq, batch, hidden]: put together along dim 0, then batch-first
    if sp:  # each rank holds its part of the sequence
        return tuple(torch.cat([part[key] for part in parts], dim=0).transpose(0, 1) for key in ("output", "input_grad"))
    for part in parts[1:]:  # replicated: every rank holds the whole
        torch.testing.assert_close(part["output"], parts[0]["output"], rtol=0, atol=1e-6)
    return parts[0]["output"].transpose(0, 1), parts[0]["input_grad"].transpose(0, 1)


def _case(family: str):
    layer = _layer(family)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=generator)
    grad = torch.randn(BATCH, SEQ, HIDDEN, generator=generator)
    expected = _transformers(family, layer, x, grad)
    return {"weights": _par_weights(family, layer), "input": x, "grad": grad}, expected


def _error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_layer_equals_transformers(family, layout, workdir):
    tp, sp = LAYOUTS[layout]
    data, (output, input_grad) = _case(family)
    actual_output, actual_grad = _sharded(family, tp, sp, workdir, data)
    assert _error(actual_output, output) < TOLERANCE
    assert _error(actual_grad, input_grad) < TOLERANCE


MUTATIONS = {
    # the rope step left out: attention reads Q and K as the linear gave them
    "llama without rope": ("llama", lambda text: text.replace("pos = rotary_embedding(qkv,", "pos = (lambda qkv, **_: qkv)(qkv,")),
    # V turned as well as Q and K
    "llama rope on v": ("llama", lambda text: text.replace(
        "split([q_size + kv_size, kv_size], dim=-1)", "split([q_size + 2 * kv_size, 0], dim=-1)"
    ).replace("(q_size + kv_size) // HEAD_DIM, HEAD_DIM)", "(q_size + 2 * kv_size) // HEAD_DIM, HEAD_DIM)")),
    # every rank adds the row-parallel bias to its partial sum: the sum holds it tp times
    "gpt2 bias on every rank": ("gpt2", lambda text: text.replace("adds_bias=groups.tp_rank == 0", "adds_bias=True")),
    # the QKV bias left out
    "qwen2 without qkv bias": ("qwen2", lambda text: text.replace("return F.linear(x, self.weight, self.bias)", "return F.linear(x, self.weight)")),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_mutated_model_py_fails_the_comparison(name, workdir):
    family, mutate = MUTATIONS[name]
    data, (output, _) = _case(family)
    actual_output, _ = _sharded(family, 2, False, workdir, data, mutate)
    assert _error(actual_output, output) > 100 * TOLERANCE
