"""The rotary embedding of the generated code against transformers' own (an oracle that shares
no code with par): the inverse frequencies of each scaling against the rope init functions,
and the turned Q and K heads, forward and backward, against `apply_rotary_pos_emb`, in every
layout of a fused QKV that the layer writer uses (standard, one block per rank, one rank's block).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

from par.codegen.pytorch.runtime import ops  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, TP = 4, 2, 8, 2
SCALINGS = {
    "none": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    # Llama 3.1's numbers, with the original context short enough that every band is used.
    "llama3": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
    },
}


def _config(scaling: str, head_dim: int = HEAD_DIM) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=HEADS * head_dim, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=head_dim, max_position_embeddings=256, rope_parameters=dict(SCALINGS[scaling]),
    )


@pytest.fixture
def spec(monkeypatch):
    """Sets the runtime's constants as model.py would for a scaling (and the mesh's TP)."""

    def set_scaling(scaling: str, head_dim: int = HEAD_DIM) -> LlamaConfig:
        parameters = SCALINGS[scaling]
        for name, value in {
            "HEADS": HEADS, "KV_HEADS": KV_HEADS, "HEAD_DIM": head_dim, "TP": TP,
            "ROPE_SCALING": scaling, "ROPE_THETA": parameters["rope_theta"],
            "ROPE_FACTOR": parameters.get("factor", 1.0),
            "ROPE_LOW_FREQ_FACTOR": parameters.get("low_freq_factor", 1.0),
            "ROPE_HIGH_FREQ_FACTOR": parameters.get("high_freq_factor", 4.0),
            "ROPE_ORIGINAL_MAX_POSITIONS": parameters.get("original_max_position_embeddings", 8192),
        }.items():
            monkeypatch.setattr(ops, name, value)
        return _config(scaling, head_dim)

    return set_scaling


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("head_dim", [8, 128])
def test_inverse_frequencies_are_transformers(spec, scaling, head_dim):
    config = spec(scaling, head_dim)
    if scaling == "none":
        expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[SCALINGS[scaling]["rope_type"]](config)
    torch.testing.assert_close(ops.rope_frequencies(torch.device("cpu")), expected, rtol=0, atol=0)


def test_llama3_scaling_changes_long_wavelengths_only(spec):
    """The llama3 case above is not the default in disguise: it divides the low frequencies."""
    spec("llama3", 128)
    scaled = ops.rope_frequencies(torch.device("cpu"))
    spec("none", 128)
    plain = ops.rope_frequencies(torch.device("cpu"))
    assert torch.equal(scaled[:4], plain[:4])
    torch.testing.assert_close(scaled[-1], plain[-1] / 8)


def _transformers_rope(q: torch.Tensor, k: torch.Tensor, config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """q [batch, seq, heads, head_dim], k [batch, seq, kv_heads, head_dim], rotated by transformers."""
    batch, seq = q.shape[:2]
    positions = torch.arange(seq)[None].expand(batch, seq)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    q_out, k_out = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    return q_out.transpose(1, 2), k_out.transpose(1, 2)


def _split(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    batch, seq, _ = qkv.shape
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return q.reshape(batch, seq, heads, head_dim), k.reshape(batch, seq, kv_heads, head_dim), v


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("layout", ["standard", "grouped", "local"])
def test_rotary_embedding_is_transformers_in_every_layout(spec, scaling, layout):
    """Forward and backward: the gradient of a random weighting of the output is the same."""
    config = spec(scaling)
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 40, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=generator, dtype=torch.float32)
    weights = torch.randn(qkv.shape, generator=generator)

    expected_input = qkv.clone().requires_grad_()
    q, k, v = _split(expected_input, HEADS, KV_HEADS, HEAD_DIM)
    q_out, k_out = _transformers_rope(q, k, config)
    expected = torch.cat([q_out.flatten(-2), k_out.flatten(-2), v], dim=-1)
    (expected * weights).sum().backward()

    actual_input = qkv.clone().requires_grad_()
    stream = actual_input.transpose(0, 1)  # model.py's activations are sequence-first
    if layout == "standard":
        actual = ops.rotary_embedding(stream, heads=HEADS, kv_heads=KV_HEADS)
    elif layout == "grouped":  # one [q | k | v] block per rank, as an AllGather of per-head shards leaves it
        grouped = ops.rotary_embedding(ops.group_heads(stream, dim=-1), heads=HEADS, kv_heads=KV_HEADS, groups=TP)
        actual = ops.ungroup_heads(grouped, dim=-1)
    else:  # each rank turns its own block of heads
        blocks = ops.group_heads(stream, dim=-1).chunk(TP, dim=-1)
        turned = [ops.rotary_embedding(block, heads=HEADS // TP, kv_heads=KV_HEADS // TP) for block in blocks]
        actual = ops.ungroup_heads(torch.cat(turned, dim=-1), dim=-1)
    actual = actual.transpose(0, 1)
    (actual * weights).sum().backward()

    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(actual_input.grad, expected_input.grad, rtol=1e-6, atol=1e-6)
    assert not torch.equal(actual, qkv)  # Q and K were turned
    torch.testing.assert_close(actual[..., -KV_HEADS * HEAD_DIM :], qkv[..., -KV_HEADS * HEAD_DIM :], rtol=0, atol=0)  # V was not


def test_rotary_embedding_keeps_no_tensor_for_backward():
    """What the registry declares for rope (`saves`: nothing): the backward turns the gradient back."""
    from autograd_saves import measure

    qkv = torch.randn(2, 8, (ops.HEADS + 2 * ops.KV_HEADS) * ops.HEAD_DIM, requires_grad=True)
    total, out, _ = measure(lambda x: ops.rotary_embedding(x * 1, heads=ops.HEADS, kv_heads=ops.KV_HEADS), [qkv], [])
    # `x * 1` keeps nothing either (a constant factor): everything counted would be the rope's
    assert total == 0
    out.sum().backward()
    assert qkv.grad is not None
